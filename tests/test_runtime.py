"""The runtime pieces on their own, in this process (fast): how a signal
becomes a stop request, and the checkpoint save cadence orbax decides."""

import os
import signal

import jax.numpy as jnp
import pytest

from alexnet_jax.runtime import checkpoints
from alexnet_jax.runtime import preemption


@pytest.mark.parametrize('sig', [signal.SIGTERM, signal.SIGINT])
def test_a_signal_becomes_a_stop_at_the_next_step(sig, capfd):
  before = signal.getsignal(sig)
  with preemption.StopRequest(lambda step: False) as stop:
    assert not stop.should_stop(1)
    os.kill(os.getpid(), sig)
    assert stop.should_stop(2) and stop.signum == sig
  assert signal.getsignal(sig) == before  # Handlers restored after the run.
  assert f'{signal.Signals(sig).name} received: finishing the current step' \
      in capfd.readouterr().err


def test_save_cadence_is_orbaxs_policy(tmp_path):
  """Every 4 steps, every 6 (evaluations), and the last step (10); never a
  step already saved."""
  ckpt = checkpoints.Checkpointer(str(tmp_path), keep=3, save_every=(4, 6),
                                  save_on=(10,))
  try:
    wanted = [s for s in range(1, 11) if ckpt.should_save(s)]
    assert wanted == [4, 6, 8, 10]
    ckpt.save(8, {'w': jnp.zeros(2)})
    ckpt.wait()
    assert not ckpt.should_save(8) and not ckpt.should_save(6)
  finally:
    ckpt.close()
  assert checkpoints.saved_steps(str(tmp_path)) == [8]
