"""Stands in for alexnet_jax.main on the fake TPU workers (the fake gcloud's
execute mode installs it as alexnet_jax/main.py there).

It counts steps and keeps its progress in the workdir (gs:// through
FAKE_GCS_ROOT) the way checkpoints do: worker 0 writes the step reached,
and a new start resumes from it. SIGTERM makes it finish the step, say
`stopped by SIGTERM at step S/N` and exit 143. Every start is recorded in
FAKE_GCS_ROOT/starts.jsonl: worker, pid, session id, the step it resumed
from, its arguments.

Environment: DUMMY_STEPS (default 20) steps of DUMMY_STEP_SECONDS (0.05);
DUMMY_EXITS, e.g. "75,0": this worker's first start exits 75 after 3 steps,
its second finishes (0); the last entry repeats (default "0").
"""

import json
import os
import signal
import sys
import time


def read_starts(path):
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f]


def main(argv):
  args = dict(a.split('=', 1) for a in argv if a.startswith('--') and '=' in a)
  root = os.environ['FAKE_GCS_ROOT']
  workdir = os.path.join(root, args['--workdir'][len('gs://'):])
  worker = int(os.environ['TPU_WORKER_ID'])
  steps = int(os.environ.get('DUMMY_STEPS', '20'))
  pause = float(os.environ.get('DUMMY_STEP_SECONDS', '0.05'))
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
                        'argv': argv}) + '\n')
  stop = []
  signal.signal(signal.SIGTERM, lambda *_: stop.append(True))
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
