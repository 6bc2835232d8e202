"""FLOPs for MFU: each device's datasheet peak, and XLA's count of a
train step's work (which the GPU's own cost analysis gets wrong)."""

import jax
import jax.numpy as jnp

# Dense peak FLOP/s per device by (device_kind prefix, dtype). float32
# matmuls on NVIDIA GPUs run as TF32 under XLA's default precision, so their
# float32 peak is the TF32 one. Vendor datasheets (SXM parts for NVIDIA).
PEAK_FLOPS = {
    ('NVIDIA H100', 'bfloat16'): 989e12, ('NVIDIA H100', 'float32'): 494e12,
    ('NVIDIA H200', 'bfloat16'): 989e12, ('NVIDIA H200', 'float32'): 494e12,
    ('NVIDIA A100', 'bfloat16'): 312e12, ('NVIDIA A100', 'float32'): 156e12,
    ('TPU v4', 'bfloat16'): 275e12, ('TPU v5 lite', 'bfloat16'): 197e12,
    ('TPU v5e', 'bfloat16'): 197e12, ('TPU v5p', 'bfloat16'): 459e12,
    ('TPU v6', 'bfloat16'): 918e12,
}


def peak_flops(device, dtype: str):
  for (prefix, kind), flops in PEAK_FLOPS.items():
    if device.device_kind.startswith(prefix) and kind == dtype:
      return flops
  return None

def step_flops(model, batch_size: int, side: int) -> float:
  """XLA's FLOP count of the step's forward and backward pass (the
  optimizer's few FLOPs aside), lowered for the CPU whatever runs the step:
  on GPU the step's convolutions are cuDNN custom calls that its cost
  analysis counts as nothing (7.6 GFLOP for a 990 GFLOP step on an H200)."""
  cpu = jax.sharding.SingleDeviceSharding(jax.devices('cpu')[0])
  on_cpu = lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=cpu)
  images = jax.ShapeDtypeStruct((batch_size, side, side, 3), jnp.float32,
                                sharding=cpu)
  variables = jax.tree.map(on_cpu, jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros((1, side, side, 3)))))

  def loss(params, rest, x):  # Dropout and batch statistics aside.
    return model.apply({**rest, 'params': params}, x).astype(
        jnp.float32).sum()

  rest = {k: v for k, v in variables.items() if k != 'params'}
  analysis = jax.jit(jax.grad(loss)).lower(
      variables['params'], rest, images).cost_analysis()
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0] if analysis else {}
  return float(analysis.get('flops', 0.)) if analysis else None
