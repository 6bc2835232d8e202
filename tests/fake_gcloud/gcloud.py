"""A fake `gcloud` binary for the TPU launcher's tests: the commands
launch/tpu_vm.py and launch/tpu_worker.sh run, refused as gcloud 528.0.0
refuses them (spec.py) and done to a simulated world as the real service
does them (world.py). Every call is recorded.

Environment:
  FAKE_GCLOUD_LOG    one JSON line per call, its argv after `gcloud` (calls
                     made on a worker go to FILE.workers)
  FAKE_GCLOUD_STATE  the world (world.py), JSON, read and written back by
                     every call but `storage` ones
  FAKE_GCS_ROOT      Cloud Storage as a folder: gs://B/P is FAKE_GCS_ROOT/B/P
                     (unless STORAGE_EMULATOR_HOST names a GCS emulator)
  FAKE_TPU_WORKERS   execute mode: the workers are real (workers.py)
"""

import json
import os
import sys

from workers import ExecutedWorkers
from world import EmulatorStorage, FolderStorage, RecordedWorkers, World


def main(argv):
  log = os.environ['FAKE_GCLOUD_LOG']
  if os.environ.get('FAKE_GCLOUD_WORKER'):
    log += '.workers'
  with open(log, 'a', encoding='utf-8') as f:
    f.write(json.dumps(argv) + '\n')
  emulator = os.environ.get('STORAGE_EMULATOR_HOST')
  storage = EmulatorStorage(emulator) if emulator else FolderStorage(
      os.environ.get('FAKE_GCS_ROOT', '/nonexistent'))
  if argv[:1] == ['storage']:
    return finish(*World({}, storage, RecordedWorkers()).call(argv))
  path = os.environ['FAKE_GCLOUD_STATE']
  with open(path, encoding='utf-8') as f:
    state = json.load(f)
  root = os.environ.get('FAKE_TPU_WORKERS')
  workers = ExecutedWorkers(root) if root else RecordedWorkers()
  try:
    return finish(*World(state, storage, workers, echo=sys.stderr).call(argv))
  finally:
    with open(path + '.part', 'w', encoding='utf-8') as f:
      json.dump(state, f)
    os.replace(path + '.part', path)


def finish(status, out, err):
  sys.stdout.write(out)
  sys.stderr.write(err)
  return status


if __name__ == '__main__':
  sys.exit(main(sys.argv[1:]))
