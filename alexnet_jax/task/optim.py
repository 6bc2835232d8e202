"""The optimizers: SGD in the 2012 paper's update rule, and LARS for large
batches; and the learning-rate schedules.

SGD (`optimizer='sgd'`). The paper (Sec. 5) updates
    v <- 0.9 * v - 0.0005 * lr * w - lr * dL/dw
    w <- w + v
i.e. momentum accumulates the *learning-rate-scaled* step. optax.sgd instead
accumulates raw gradients and scales afterwards, which differs whenever the
learning rate changes. The chain below is the paper's order: decay, scale by
the (scheduled) learning rate, [plateau scale], then momentum.

LARS (`optimizer='lars'`; You, Gitman & Ginsburg 2017): optax.lars, the
same order with each layer's step scaled by its trust ratio
eta * ||w|| / ||g + wd * w|| first. Weight decay and the trust ratio apply to
conv/FC kernels only: optax's default applies both to biases and
normalization parameters too, which the recipe does not.
"""

from typing import Optional

import flax
import jax
import optax

SCHEDULES = ('plateau', 'step', 'cosine', 'poly', 'constant')
OPTIMIZERS = ('sgd', 'lars')


def learning_rate_schedule(kind: str, learning_rate: float, durations, *,
                           lr_step_factor: float = 0.1,
                           poly_power: float = 2.0):
  """An optax schedule of kind `kind` (SCHEDULES), in steps (`Durations`:
  the total, the warmup, the step schedule's boundaries)."""
  lr, warmup = learning_rate, durations.warmup_steps
  if kind == 'cosine':
    return optax.warmup_cosine_decay_schedule(
        init_value=0., peak_value=lr, warmup_steps=warmup,
        decay_steps=max(durations.total_steps, warmup + 1), end_value=0.)
  if kind == 'poly':  # The LARS recipe's: to 0 at the last step.
    main = optax.polynomial_schedule(
        init_value=lr, end_value=0., power=poly_power,
        transition_steps=max(durations.total_steps - warmup, 1))
  elif kind == 'step':
    # After warmup, join_schedules counts steps from the join.
    main = optax.piecewise_constant_schedule(
        lr, {b - warmup: lr_step_factor for b in durations.lr_step_boundaries})
  elif kind in ('plateau', 'constant'):
    main = optax.constant_schedule(lr)
  else:
    raise ValueError(f'unknown schedule {kind!r}; valid: '
                     f'{", ".join(SCHEDULES)}')
  if warmup == 0:
    return main
  return optax.join_schedules(
      [optax.linear_schedule(0., lr, warmup), main], [warmup])


def _kernels_only(params):
  """Weight decay mask: conv/FC kernels, not biases (as cuda-convnet and Caffe)."""
  flat = flax.traverse_util.flatten_dict(params)
  return flax.traverse_util.unflatten_dict(
      {k: k[-1] == 'kernel' for k in flat})


def sgd(schedule, *, weight_decay: float, momentum: float,
        plateau: Optional[dict] = None):
  """The paper's SGD: decay, scale by the (scheduled) learning rate,
  [plateau scale], then momentum (the module docstring says why this
  order). `plateau`: optax's reduce_on_plateau arguments, e.g. {'patience',
  'accumulation_size', 'min_scale'}; its update then takes
  `value=<val top-1 error>`, averaged over the steps between evaluations so
  each decision sees exactly one validation measurement."""
  chain = [
      optax.add_decayed_weights(weight_decay, mask=_kernels_only),
      optax.scale_by_learning_rate(schedule),
  ]
  if plateau is not None:
    chain.append(optax.contrib.reduce_on_plateau(factor=0.1, **plateau))
  chain.append(optax.trace(decay=momentum, nesterov=False))
  return optax.chain(*chain)


def lars(schedule, *, weight_decay: float, momentum: float,
         trust_coefficient: float, eps: float):
  """optax's LARS with weight decay and the trust ratio on kernels only."""
  return optax.lars(
      schedule, weight_decay=weight_decay, weight_decay_mask=_kernels_only,
      trust_coefficient=trust_coefficient, eps=eps,
      trust_ratio_mask=_kernels_only, momentum=momentum)


def plateau_scale(opt_state):
  """The reduce-on-plateau multiplier inside an optimizer state, or 1."""
  for s in jax.tree.leaves(
      opt_state, is_leaf=lambda x: isinstance(
          x, optax.contrib.ReduceLROnPlateauState)):
    if isinstance(s, optax.contrib.ReduceLROnPlateauState):
      return s.scale
  return 1.0
