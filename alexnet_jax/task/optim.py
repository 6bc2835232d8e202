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

import flax
import jax
import optax

SCHEDULES = ('plateau', 'step', 'cosine', 'poly', 'constant')
OPTIMIZERS = ('sgd', 'lars')


def learning_rate_schedule(config, durations):
  """An optax schedule for `config.schedule`, in steps (`Durations`)."""
  lr, warmup = config.learning_rate, durations.warmup_steps
  if config.schedule == 'cosine':
    return optax.warmup_cosine_decay_schedule(
        init_value=0., peak_value=lr, warmup_steps=warmup,
        decay_steps=max(durations.total_steps, warmup + 1), end_value=0.)
  if config.schedule == 'poly':  # The LARS recipe's: to 0 at the last step.
    main = optax.polynomial_schedule(
        init_value=lr, end_value=0., power=config.poly_power,
        transition_steps=max(durations.total_steps - warmup, 1))
  elif config.schedule == 'step':
    # After warmup, join_schedules counts steps from the join.
    main = optax.piecewise_constant_schedule(
        lr, {b - warmup: config.lr_step_factor
             for b in durations.lr_step_boundaries})
  elif config.schedule in ('plateau', 'constant'):
    main = optax.constant_schedule(lr)
  else:
    raise ValueError(f'unknown schedule {config.schedule!r}; valid: '
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


def make_optimizer(config, durations):
  """The optimizer and its learning-rate schedule (for logging).

  With the 'plateau' schedule the update takes `value=<val top-1 error>`;
  optax's reduce_on_plateau averages it over the steps between evaluations,
  so each decision sees exactly one validation measurement.
  """
  schedule = learning_rate_schedule(config, durations)
  if config.optimizer == 'lars':
    return optax.lars(
        schedule, weight_decay=config.weight_decay,
        weight_decay_mask=_kernels_only,
        trust_coefficient=config.lars_trust_coefficient,
        eps=config.lars_eps, trust_ratio_mask=_kernels_only,
        momentum=config.momentum), schedule
  steps_per_eval = durations.steps_per_eval or durations.total_steps
  chain = [
      optax.add_decayed_weights(config.weight_decay, mask=_kernels_only),
      optax.scale_by_learning_rate(schedule),
  ]
  if config.schedule == 'plateau':
    chain.append(optax.contrib.reduce_on_plateau(
        factor=0.1, patience=config.plateau_patience,
        accumulation_size=steps_per_eval,
        min_scale=0.1 ** config.plateau_reductions))
  chain.append(optax.trace(decay=config.momentum, nesterov=False))
  return optax.chain(*chain), schedule


def plateau_scale(opt_state):
  """The reduce-on-plateau multiplier inside an optimizer state, or 1."""
  for s in jax.tree.leaves(
      opt_state, is_leaf=lambda x: isinstance(
          x, optax.contrib.ReduceLROnPlateauState)):
    if isinstance(s, optax.contrib.ReduceLROnPlateauState):
      return s.scale
  return 1.0
