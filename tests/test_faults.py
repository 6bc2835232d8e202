"""Runs that survive: kill -9, SIGTERM/SIGINT, damaged checkpoints, a NaN, a
full disk and a read-only workdir. Real subprocesses, real signals, real
files; each rerun is compared bit for bit with an uninterrupted run."""

import glob
import os
import random
import shutil
import signal
import subprocess

import jax
import numpy as np
import pytest

from alexnet_jax.runtime import checkpoints
from alexnet_jax.runtime.layout import Layout
from tests import cli
from tests.conftest import require_cifar_subset
from tests.helpers import LineReader
from tests.helpers import wait_for

pytestmark = pytest.mark.slow  # The whole module: see conftest.py.

# 60 steps of 64 images, checkpoints every 10, val (and plateau) every 21.
STEPS = 60
RUN = dict(batch_size=64, num_epochs=0, num_steps=STEPS, eval_every_epochs=0.3)


def run_args(cifar, workdir):
  return cli.cli_args(cifar, workdir, **RUN)


@pytest.fixture(scope='module')
def reference(tmp_path_factory, subprocess_env):
  """An uninterrupted run's workdir."""
  cifar = require_cifar_subset()
  workdir = str(tmp_path_factory.mktemp('ref') / 'w')
  done = cli.run_cli(run_args(cifar, workdir), subprocess_env)
  assert done.returncode == 0, done.stderr[-3000:]
  return dict(workdir=workdir, cifar=cifar)


def progress_line(step):
  """The start of the console line a run prints after `step` (every 5)."""
  return f'step {step:>{len(str(STEPS))}}/{STEPS} | '


def assert_same_as_reference(workdir, reference):
  """The final state bit for bit; final metrics and metrics.jsonl record for
  record (speeds aside): train records cover the same windows of steps
  whether or not the run was stopped and resumed between two of them."""
  cli.assert_states_bitwise_equal(workdir, reference['workdir'], STEPS)
  with open(os.path.join(workdir, 'final_metrics.json')) as f:
    got = f.read()
  with open(os.path.join(reference['workdir'], 'final_metrics.json')) as f:
    assert got == f.read()
  assert (cli.without_speed(cli.read_jsonl(workdir)) ==
          cli.without_speed(cli.read_jsonl(reference['workdir'])))


def kill_points_seed() -> int:
  """ALEXNET_JAX_KILL_SEED replays a failure; else a fresh seed."""
  return int(os.environ.get('ALEXNET_JAX_KILL_SEED') or
             int.from_bytes(os.urandom(4), 'little'))


def test_kill_9_three_times_then_rerun_is_bitwise_equal(reference, tmp_path,
                                                        subprocess_env):
  """Three lives, each killed with -9 at a random point of its run: just
  after it printed the progress line of a random logged step past the step
  it resumed from (the saves at steps 10, 20, ... begin right after theirs,
  so some kills land in a save). The points are events, not delays, so no
  life can reach the end first however fast or slow the machine is."""
  seed = kill_points_seed()
  rng = random.Random(seed)
  workdir = str(tmp_path / 'w')
  args = run_args(reference['cifar'], workdir)
  kills = []
  for _ in range(3):
    start = checkpoints.latest_step_on_disk(workdir) or 0
    later = [s for s in range(5, STEPS, 5) if s > start]
    assert later, (seed, kills, f'resumed at {start}: nothing left to kill')
    kills.append(rng.choice(later))
    proc = cli.start_cli(args, subprocess_env, stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL)
    out = LineReader(proc.stdout)
    out.wait_for(progress_line(kills[-1]))
    assert proc.poll() is None, (seed, kills, 'exited before the kill')
    proc.kill()  # SIGKILL: no handler runs.
    proc.wait()
    out.rest()
  done = cli.run_cli(args, subprocess_env)
  replay = f'killed after steps {kills} (ALEXNET_JAX_KILL_SEED={seed} replays)'
  assert done.returncode == 0, (replay, done.stderr[-2000:])
  try:
    assert_same_as_reference(workdir, reference)
  except AssertionError as e:
    raise AssertionError(f'{replay}: {e}') from e


@pytest.mark.parametrize('sig', [signal.SIGTERM, signal.SIGINT])
def test_signal_saves_current_step_then_rerun_resumes(reference, tmp_path,
                                                      subprocess_env, sig):
  workdir = str(tmp_path / 'w')
  args = run_args(reference['cifar'], workdir)
  proc = cli.start_cli(args, subprocess_env, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE)
  wait_for(lambda: os.path.isdir(os.path.join(workdir, 'checkpoints', '30')),
           what='checkpoint 30', proc=proc)
  proc.send_signal(sig)
  out, err = proc.communicate(timeout=120)
  name = signal.Signals(sig).name
  assert proc.returncode == 128 + sig, err[-2000:]
  last = out.strip().splitlines()[-1]
  assert last.startswith(f'stopped by {name} at step ') and \
      'rerun the same command to resume' in last, out[-1000:]
  step = int(last.split('at step ')[1].split('/')[0])
  assert 30 <= step < STEPS
  assert os.path.isdir(os.path.join(workdir, 'checkpoints', str(step)))
  assert cli.read_jsonl(workdir)[-1]['step'] == step  # Metrics flushed.
  assert 'Traceback' not in err

  resumed = cli.run_cli(args, subprocess_env)
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  assert 'resuming from' in resumed.stdout and f'at step {step}' in \
      resumed.stdout
  assert_same_as_reference(workdir, reference)


def test_second_signal_exits_at_once_without_saving(reference, tmp_path,
                                                    subprocess_env):
  workdir = str(tmp_path / 'w')
  proc = cli.start_cli(run_args(reference['cifar'], workdir),
                       subprocess_env, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE)
  wait_for(lambda: os.path.isdir(os.path.join(workdir, 'checkpoints', '20')),
           what='checkpoint 20', proc=proc)
  saved = checkpoints.saved_steps(workdir)
  stdout, stderr = LineReader(proc.stdout), LineReader(proc.stderr)
  proc.send_signal(signal.SIGTERM)
  stderr.wait_for('SIGTERM received')
  proc.send_signal(signal.SIGTERM)  # While it finishes the step and saves.
  proc.wait(timeout=120)
  out, err = stdout.rest(), stderr.rest()
  assert proc.returncode == 128 + signal.SIGTERM
  assert 'SIGTERM again: exiting at once' in err, err[-2000:]
  assert 'stopped by SIGTERM' not in out
  # No new checkpoint: the first signal's save never completed.
  assert checkpoints.saved_steps(workdir) == saved


CHUNKED = dict(RUN, num_steps=30, steps_per_call=8, log_every_steps=20)


@pytest.fixture(scope='module')
def chunked_reference(tmp_path_factory, subprocess_env):
  """An uninterrupted run taking up to 8 steps a call (`steps.OnDevice`, a
  program of its own: not bitwise the one-step run)."""
  cifar = require_cifar_subset()
  workdir = str(tmp_path_factory.mktemp('chunked') / 'w')
  done = cli.run_cli(cli.cli_args(cifar, workdir, **CHUNKED),
                     subprocess_env)
  assert done.returncode == 0, done.stderr[-3000:]
  assert 'up to 8 steps per call' in done.stdout, done.stdout[:2000]
  return workdir


def test_signal_in_chunks_stops_after_the_chunk_and_resumes_exactly(
    reference, chunked_reference, tmp_path, subprocess_env):
  """SIGTERM while 8 steps a call run: the run stops at the end of the
  chunk under way (a step no log or save forced), saves it, and the rerun
  ends bit for bit where the uninterrupted chunked run ended."""
  workdir = str(tmp_path / 'w')
  args = cli.cli_args(reference['cifar'], workdir, **CHUNKED)
  proc = cli.start_cli(args, subprocess_env, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE)
  wait_for(lambda: os.path.isdir(os.path.join(workdir, 'checkpoints', '10')),
           what='checkpoint 10', proc=proc)
  proc.send_signal(signal.SIGTERM)
  out, err = proc.communicate(timeout=120)
  assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
  last = out.strip().splitlines()[-1]
  assert last.startswith('stopped by SIGTERM at step '), out[-1000:]
  step = int(last.split('at step ')[1].split('/')[0])
  assert 10 <= step < 30
  assert os.path.isdir(os.path.join(workdir, 'checkpoints', str(step)))
  resumed = cli.run_cli(args, subprocess_env)
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  assert f'at step {step}' in resumed.stdout
  cli.assert_states_bitwise_equal(workdir, chunked_reference, 30)
  assert (cli.without_speed(cli.read_jsonl(workdir)) ==
          cli.without_speed(cli.read_jsonl(chunked_reference)))


# --- Damaged checkpoints ------------------------------------------------------------


def _largest_array_file(step_dir):
  return max(glob.glob(os.path.join(step_dir, 'default', '**', 'd', '*'),
                       recursive=True), key=os.path.getsize)


def _truncate(path):
  with open(path, 'rb') as f:
    data = f.read()
  with open(path, 'wb') as f:
    f.write(data[:len(data) // 2])


DAMAGE = {
    'truncated array file': lambda d: _truncate(_largest_array_file(d)),
    'deleted array file': lambda d: os.remove(_largest_array_file(d)),
    'truncated checkpoint metadata': lambda d: _truncate(
        os.path.join(d, '_CHECKPOINT_METADATA')),
    'truncated metrics': lambda d: _truncate(
        os.path.join(d, 'metrics', 'metrics')),
    'half-written step directory': lambda d: [
        os.remove(os.path.join(d, '_CHECKPOINT_METADATA')),
        shutil.rmtree(os.path.join(d, 'metrics'))],
}


@pytest.mark.parametrize('damage', list(DAMAGE))
def test_damaged_newest_checkpoint_resumes_from_newest_good_one(
    reference, tmp_path, subprocess_env, damage):
  """The run was killed before writing final_metrics.json, and its newest
  checkpoint (the final step) is damaged: the rerun names it, sets it aside
  intact, resumes from the step before and ends bit for bit as the reference."""
  workdir = str(tmp_path / 'w')
  shutil.copytree(reference['workdir'], workdir)
  os.remove(os.path.join(workdir, 'final_metrics.json'))
  steps = sorted(int(s) for s in os.listdir(os.path.join(workdir,
                                                         'checkpoints')))
  assert steps[-1] == STEPS
  newest = os.path.join(workdir, 'checkpoints', str(STEPS))
  DAMAGE[damage](newest)
  damaged_files = cli.snapshot(newest)
  good = {s: cli.snapshot(os.path.join(workdir, 'checkpoints', str(s)))
          for s in steps[:-1]}

  result = cli.run_cli(run_args(reference['cifar'], workdir),
                       subprocess_env)
  assert result.returncode == 0, result.stderr[-2000:]
  assert (f'checkpoint step {STEPS} in {workdir}/checkpoints is unusable'
          in result.stdout), result.stdout[-2000:]
  assert f'at step {steps[-2]}' in result.stdout
  # Set aside byte for byte, not deleted.
  assert cli.snapshot(os.path.join(Layout.of(workdir).damaged_checkpoints,
                                   str(STEPS))) == damaged_files
  # The good step it resumed from was not touched.
  assert cli.snapshot(os.path.join(workdir, 'checkpoints',
                                   str(steps[-2]))) == good[steps[-2]]
  assert_same_as_reference(workdir, reference)


# --- A NaN ---------------------------------------------------------------------


def test_nan_names_the_step_and_saves_nothing_after_it(cifar_dir, tmp_path,
                                                       subprocess_env):
  """The learning rate jumps x1e30 after epoch 1 (step 35): the loss blows up
  within two steps. Nothing from that step on may be saved."""
  workdir = str(tmp_path / 'w')
  result = cli.run_cli(cli.cli_args(
      cifar_dir, workdir, schedule='step', lr_step_epochs='(1,)',
      lr_step_factor=1e30, eval_every_epochs=0, num_epochs=0, num_steps=80),
                       subprocess_env)
  line = cli.assert_one_error_line(result, 'non-finite at step ')
  bad = int(line.split('non-finite at step ')[1].split(';')[0])
  assert 36 <= bad <= 40, line
  steps = sorted(int(s) for s in os.listdir(os.path.join(workdir,
                                                         'checkpoints')))
  assert steps and max(steps) < bad
  assert f'The last good checkpoint, step {max(steps)} in' in line
  state = cli.load_state_on_host(workdir, max(steps))
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(state['params']))
  assert max(r['step'] for r in cli.read_jsonl(workdir)) < bad
  assert not os.path.exists(os.path.join(workdir, 'final_metrics.json'))


# --- A full disk, a read-only workdir -------------------------------------------

def _namespace_or_skip():
  """Tiny filesystems and read-only mounts need a user+mount namespace."""
  probe = subprocess.run(['unshare', '-rm', 'true'], capture_output=True)
  if probe.returncode != 0:
    pytest.skip('cannot create a user+mount namespace here (unshare -rm): '
                + probe.stderr.decode()[-200:])


def test_disk_full_while_saving_is_one_line_and_keeps_checkpoints(
    cifar_dir, tmp_path, subprocess_env):
  """The workdir on a 1.5 MB tmpfs: the first checkpoints fit, later ones
  do not. The run stops with one line; what was saved still restores."""
  _namespace_or_skip()
  mount, saved = tmp_path / 'tiny', tmp_path / 'saved'
  mount.mkdir()
  args = cli.cli_args(cifar_dir, str(mount / 'w'), keep_checkpoints=20,
                      num_epochs=0, num_steps=200)
  # Mount, train, then copy what is left out of the namespace's tmpfs.
  script = ('mount -t tmpfs -o size=1536k tmpfs "$1" && m="$1" s="$2" && '
            'shift 2 && "$@"; rc=$?; cp -a "$m/w" "$s/"; exit $rc')
  saved.mkdir()
  result = subprocess.run(
      ['unshare', '-rm', 'sh', '-c', script, 'sh', str(mount), str(saved)]
      + cli.MAIN + args, cwd=cli.REPO, env=subprocess_env, capture_output=True,
      text=True, timeout=600)
  line = cli.assert_one_error_line(result, 'No space left on device')
  assert 'rerun the same command to resume' in line
  workdir = str(saved / 'w')
  steps = sorted(int(s) for s in os.listdir(os.path.join(workdir,
                                                         'checkpoints'))
                 if s.isdigit())  # Not the failed save's temporary dir.
  assert steps, 'no checkpoint fit at all: raise the tmpfs size'
  if 'cannot write checkpoint step' in line:
    assert f'(latest: step {steps[-1]}) are intact' in line, (line, steps)
  for step in steps:  # Every finished checkpoint restores.
    state = cli.load_state_on_host(workdir, step)
    assert int(state['step']) == step


def test_read_only_workdir_is_one_line_and_untouched(
    cifar_dir, tmp_path, subprocess_env):
  """Resuming into a workdir that has become read-only (a remounted disk)."""
  _namespace_or_skip()
  workdir = str(tmp_path / 'w')
  first = cli.run_cli(cli.cli_args(cifar_dir, workdir, num_epochs=0,
                                   num_steps=10), subprocess_env)
  assert first.returncode == 0, first.stderr[-2000:]
  before = cli.snapshot(workdir)
  script = ('mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" && '
            'shift && exec "$@"')
  result = subprocess.run(
      ['unshare', '-rm', 'sh', '-c', script, 'sh', workdir] + cli.MAIN +
      cli.cli_args(cifar_dir, workdir, num_epochs=0, num_steps=30),
      cwd=cli.REPO, env=subprocess_env, capture_output=True, text=True,
      timeout=600)
  cli.assert_one_error_line(result, 'Read-only file system')
  assert cli.snapshot(workdir) == before


def test_bfloat16_run_killed_and_resumed_equals_its_twin(cifar_dir, tmp_path,
                                                         subprocess_env):
  """half_precision=True (bfloat16 compute, float32 parameters), as four
  configs default to: an uninterrupted run, and its twin killed with -9
  after its checkpoint at step 10 and rerun, end bit for bit alike."""
  args = lambda workdir: cli.cli_args(
      cifar_dir, workdir, batch_size=64, num_epochs=0, num_steps=24,
      eval_every_epochs=0.3, half_precision=True)
  twin, killed = str(tmp_path / 'twin'), str(tmp_path / 'killed')
  done = cli.run_cli(args(twin), subprocess_env)
  assert done.returncode == 0, done.stderr[-2000:]
  proc = cli.start_cli(args(killed), subprocess_env,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  wait_for(lambda: checkpoints.latest_step_on_disk(killed) is not None,
           what='a first checkpoint', proc=proc)
  proc.kill()
  proc.communicate()
  assert checkpoints.latest_step_on_disk(killed) < 24
  resumed = cli.run_cli(args(killed), subprocess_env)
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  assert 'resuming from' in resumed.stdout
  cli.assert_states_bitwise_equal(killed, twin, 24)
  for name in ('final_metrics.json', 'config.json'):
    with open(os.path.join(killed, name)) as a, open(os.path.join(twin,
                                                                  name)) as b:
      assert a.read() == b.read()
  with open(os.path.join(twin, 'config.json')) as f:
    assert '"half_precision": true' in f.read()
