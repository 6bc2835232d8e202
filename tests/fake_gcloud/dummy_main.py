"""Stands in for alexnet_jax.main on the fake TPU workers (the fake gcloud's
execute mode installs it as alexnet_jax/main.py there).

It counts steps and keeps its progress in the workdir (gs:// through
FAKE_GCS_ROOT) the way checkpoints do: worker 0 writes the step reached,
and a new start resumes from it. SIGTERM makes it finish the step, say
`stopped by SIGTERM at step S/N` and exit 143. Every start is recorded in
FAKE_GCS_ROOT/starts.jsonl: worker, pid, session id, the step it resumed
from, the start it belongs to, its arguments. Like the real trainers (which
meet in `jax.distributed.initialize` before restoring one checkpoint
together), the workers of a start wait for each other before the first
step, so all of them resume from the same step however late one starts.

Environment: DUMMY_STEPS (default 20) steps of DUMMY_STEP_SECONDS (0.05);
DUMMY_EXITS, e.g. "75,0": this worker's first start exits 75 after 3 steps,
its second finishes (0); the last entry repeats (default "0");
DUMMY_LATE_WORKER, e.g. "1=0.5": worker 1 starts 0.5 s late (a slow host).
"""

import json
import os
import signal
import sys
import time


def read_starts(path):
  if not os.path.exists(path):
    return []
  with open(path) as f:  # A line still being written is not a start yet.
    return [json.loads(line) for line in f if line.endswith('\n')]


def wait_for_the_others(starts, stop, timeout=60.0):
  """True once every worker this start runs on has recorded its start
  (records carrying this start's FAKE_TPU_START); False on SIGTERM."""
  token, workers = (os.environ['FAKE_TPU_START'],
                    int(os.environ['FAKE_TPU_START_WORKERS']))
  deadline = time.monotonic() + timeout
  while sum(s.get('start') == token for s in read_starts(starts)) < workers:
    if stop:
      return False
    if time.monotonic() > deadline:
      raise SystemExit(f'the {workers} workers of start {token} did not all '
                       f'start within {timeout:.0f} s')
    time.sleep(0.02)
  return True


def main(argv):
  args = dict(a.split('=', 1) for a in argv if a.startswith('--') and '=' in a)
  root = os.environ['FAKE_GCS_ROOT']
  workdir = os.path.join(root, args['--workdir'][len('gs://'):])
  worker = int(os.environ['TPU_WORKER_ID'])
  steps = int(os.environ.get('DUMMY_STEPS', '20'))
  pause = float(os.environ.get('DUMMY_STEP_SECONDS', '0.05'))
  stop = []
  signal.signal(signal.SIGTERM, lambda *_: stop.append(True))
  late = os.environ.get('DUMMY_LATE_WORKER', '').split('=')
  if late[0] == str(worker):
    time.sleep(float(late[1]))
  os.makedirs(workdir, exist_ok=True)
  step_file = os.path.join(workdir, 'dummy_step')
  first = 0
  if os.path.exists(step_file):
    with open(step_file) as f:
      first = int(f.read())
  starts = os.path.join(root, 'starts.jsonl')
  earlier = [s for s in read_starts(starts) if s['worker'] == worker]
  exits = [int(x) for x in os.environ.get('DUMMY_EXITS', '0').split(',')]
  status = exits[min(len(earlier), len(exits) - 1)]
  with open(starts, 'a') as f:
    f.write(json.dumps({'worker': worker, 'pid': os.getpid(),
                        'sid': os.getsid(0), 'resumed_from': first,
                        'start': os.environ['FAKE_TPU_START'],
                        'argv': argv}) + '\n')
  if not wait_for_the_others(starts, stop):
    print('stopped by SIGTERM before the first step', flush=True)
    return 143
  print(f'resuming from step {first}' if first else 'starting', flush=True)
  last = steps if status == 0 else min(steps, first + 3)
  for step in range(first + 1, last + 1):
    time.sleep(pause)
    if worker == 0:
      with open(step_file + '.tmp', 'w') as f:
        f.write(str(step))
      os.replace(step_file + '.tmp', step_file)
    print(f'step {step}/{steps}', flush=True)
    if stop:
      print(f'stopped by SIGTERM at step {step}/{steps}', flush=True)
      return 143
  if status:
    print(f'exiting with status {status}', flush=True)
  return status


if __name__ == '__main__':
  sys.exit(main(sys.argv[1:]))
