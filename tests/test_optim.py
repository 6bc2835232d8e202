"""The optimizer against the paper's update rule, worked by hand, and the
learning-rate schedules."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from alexnet_jax import build
from alexnet_jax.task import optim
from configs import default


def config(**overrides):
  c = default.get_config()
  c.update(overrides)
  return c


def durations(cfg, steps_per_epoch, total_steps, steps_per_eval=0):
  """The run's durations in steps, as the trainer derives them."""
  cfg.num_steps = total_steps
  cfg.eval_every_epochs = steps_per_eval / steps_per_epoch
  return build.durations(cfg, steps_per_epoch)


def test_two_steps_follow_the_paper_update_rule_by_hand():
  # lr drops 0.1 -> 0.01 after step 1 so the paper's rule (momentum on the
  # lr-scaled step) differs from optax.sgd's (momentum on raw gradients).
  cfg = config(schedule='step', learning_rate=0.1, lr_step_epochs=(1,),
               lr_step_factor=0.1, momentum=0.9, weight_decay=5e-4)
  tx, _ = build.optimizer(cfg, durations(cfg, 1, 10, 1))
  w = {'conv': {'kernel': jnp.array([1.0, -2.0]), 'bias': jnp.array([0.5])}}
  grads = [{'conv': {'kernel': jnp.array([0.3, 0.1]), 'bias': jnp.array([0.2])}},
           {'conv': {'kernel': jnp.array([-0.4, 0.6]), 'bias': jnp.array([0.1])}}]
  state = tx.init(w)
  params = w
  for g in grads:
    updates, state = tx.update(g, state, params)
    params = optax.apply_updates(params, updates)

  # By hand: v <- 0.9 v - wd*lr*w - lr*g ; w <- w + v (biases: no decay).
  wk, wb = np.array([1.0, -2.0]), np.array([0.5])
  vk, vb = np.zeros(2), np.zeros(1)
  for lr, g in zip((0.1, 0.01), grads):
    gk, gb = np.asarray(g['conv']['kernel']), np.asarray(g['conv']['bias'])
    vk = 0.9 * vk - 5e-4 * lr * wk - lr * gk
    vb = 0.9 * vb - lr * gb
    wk, wb = wk + vk, wb + vb
  np.testing.assert_allclose(params['conv']['kernel'], wk, rtol=1e-6)
  np.testing.assert_allclose(params['conv']['bias'], wb, rtol=1e-6)

  # And it is not optax.sgd's rule, which would give a different answer.
  sgd = optax.chain(optax.add_decayed_weights(5e-4),
                    optax.sgd(optax.piecewise_constant_schedule(0.1, {1: 0.1}),
                              momentum=0.9))
  s, p = sgd.init(w), w
  for g in grads:
    u, s = sgd.update(g, s, p)
    p = optax.apply_updates(p, u)
  assert not np.allclose(p['conv']['kernel'], wk, rtol=1e-6)


def test_plateau_divides_by_ten_at_most_three_times():
  cfg = config(schedule='plateau', learning_rate=1.0, plateau_patience=2,
               plateau_reductions=3, weight_decay=0., momentum=0.)
  steps_per_eval = 4
  tx, _ = build.optimizer(cfg, durations(cfg, 10, 1000, steps_per_eval))
  params = {'w': jnp.zeros(())}
  state = tx.init(params)
  update = jax.jit(lambda s, v: tx.update({'w': jnp.ones(())}, s, params,
                                          value=v))
  scales = []
  # Val error improves for 3 evals, then is flat for the rest.
  errors = [0.9, 0.8, 0.7] + [0.7] * 12
  for err in errors:
    for _ in range(steps_per_eval):
      u, state = update(state, jnp.float32(err))
    scales.append(float(optim.plateau_scale(state)))
    assert float(u['w']) == pytest.approx(-scales[-1], rel=1e-6)
  # Patience 2: /10 after the 2nd non-improving eval, then every 2 more.
  assert scales[:4] == [1.0] * 4
  assert scales[4] == pytest.approx(0.1)
  assert scales[6] == pytest.approx(0.01)
  assert scales[8] == pytest.approx(0.001)
  assert scales[-1] == pytest.approx(0.001)  # Never a 4th time.


def test_cosine_schedule_warms_up_then_decays_to_zero():
  cfg = config(schedule='cosine', learning_rate=0.2, warmup_epochs=2)
  _, sched = build.optimizer(cfg, durations(cfg, 10, 100))
  assert float(sched(0)) == 0.
  assert float(sched(10)) == pytest.approx(0.1)
  assert float(sched(20)) == pytest.approx(0.2)
  assert float(sched(100)) == pytest.approx(0., abs=1e-7)
  assert float(sched(60)) == pytest.approx(0.1, rel=1e-5)


def test_step_schedule_with_warmup():
  cfg = config(schedule='step', learning_rate=0.1, warmup_epochs=1,
               lr_step_epochs=(3, 5), lr_step_factor=0.1)
  _, sched = build.optimizer(cfg, durations(cfg, 10, 80))
  assert float(sched(5)) == pytest.approx(0.05)
  assert float(sched(29)) == pytest.approx(0.1)
  assert float(sched(31)) == pytest.approx(0.01)
  assert float(sched(51)) == pytest.approx(0.001)


def test_unknown_schedule_lists_choices():
  with pytest.raises(ValueError, match="unknown schedule 'linear'.*plateau"):
    optim.learning_rate_schedule('linear', 0.1, durations(config(), 10, 100))
