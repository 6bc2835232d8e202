#!/usr/bin/env python3
"""Train alexnet_jax on a Cloud TPU VM slice, detached from this terminal, and
keep it training through preemptions (docs/clusters.md, "Cloud TPU VMs").

  launch/tpu_vm.py --workdir=gs://BUCKET/DIR --tfds-data-dir=gs://BUCKET/tfds
      [options] [-- ALEXNET_JAX_MAIN_ARGS...]    start (or rejoin) a run
  launch/tpu_vm.py --name=NAME --zone=ZONE --attach|--logs|--stop

Start: gets the VM, copies this checkout to every worker, installs
requirements-train.txt and jax[tpu]==0.10.2 there, starts `python -m
alexnet_jax.main --config.platform=tpu ARGS` on all of them, detached, and
follows worker 0's log. The same command already training is followed.

Options (--opt=VALUE or --opt VALUE):
  --name NAME              TPU VM name (default: alexnet-jax)
  --zone ZONE              (default: us-central2-b)
  --accelerator-type TYPE  FAMILY-SIZE: v4-32, v5litepod-16, v5p-8, v6e-8...
                           (default: v4-32)
  --version RUNTIME        TPU software version; default by family:
                             v2, v3, v4   tpu-ubuntu2204-base
                             v5litepod    v2-alpha-tpuv5-lite   (TPU v5e)
                             v5p          v2-alpha-tpuv5
                             v6e          v2-alpha-tpuv6e       (Trillium)
  --project PROJECT        GCP project (default: gcloud's configured one)
  --config PATH            config file in this repo (default: configs/cifar10.py)
  --workdir gs://...       required to start: checkpoints, metrics, logs
  --tfds-data-dir gs://... --config.tfds_data_dir, or
  --data-dir gs://...      --config.data_dir: one is required to start, on
                           gs:// (so is a --config.data_dir after --)
  --queued                 get the TPU as a queued resource named NAME
  --spot                   Spot capacity: cheaper, preempted at any time
  --reserved               reserved capacity (not with --spot)
  --valid-until-duration D with --queued: give the request up after D (6h)
  --node-count N           1 only: Multislice is not supported
  --retry-for DURATION     how long to keep getting the TPU back and to
                           reconnect, from when the trouble began
                           (default: 24h; 90m, 2d, 3600 also work)
  --max-restarts N         restarts of training per --restart-window
                           (default: 3; 0: none)
  --restart-window D       (default: 24h)
  --stop-grace SECONDS     SIGTERM to SIGKILL, for trainers to save (--stop
                           and leftovers; default: 120)
  --worker-python CMD      the workers' venv interpreter, apt-installed if
                           missing (default: python3.11; JAX 0.10 needs 3.11)
  --attach                 follow the running training to its end; exits
                           with its status, restarts nothing
  --logs                   print the latest run's log: worker 0's, or when
                           the VM is gone its copy in --workdir
  --stop                   SIGTERM to training on every worker: it saves and
                           exits (the same command resumes); the VM stays
  --dry-run                print every command (`+ ...`), run none
  -h, --help               show this help
  -- ARGS...               for alexnet_jax.main, after --config.platform=tpu

The VM called NAME (`tpu-vm describe`):
  none                     created (--queued: requested; a request there is
                           waited for, a FAILED or SUSPENDED one replaced)
  READY                    used; of another accelerator type: an error
  PREEMPTED or TERMINATED  deleted (with its queued resource) and created
  STOPPED                  started
  CREATING, STARTING, ...  waited for, every TPU_POLL_SECONDS (30)
A create that fails for capacity is tried again after TPU_RETRY_SECONDS
(60), doubling up to 30 min, until --retry-for; other create errors stop.

When training ends, by worker 0's exit status, on a VM that is:
  READY: 0, 2 (usage error), other failures   the end, with that status
  READY: 75 (lost process), 143/130 (signal)  restarted in place
  READY: 255 (lost connection)                followed again, with back-off
  not READY, or gone                          brought back as above, restarted
A restart resumes from the workdir's last checkpoint.

Each decision is a line `tpu_vm.py: ...` and one in WORKDIR/logs/launcher.log;
worker 0's log is copied to WORKDIR/logs/<run>.log every
TPU_LOG_COPY_SECONDS (60). The VM is left running (delete it with gcloud).

Exit status: 2 and one `error:` line for bad options, a VM NAME of another
accelerator type, or another command training there; 1 and one `error:`
line for a queued request that FAILED, a create error not about capacity,
or --retry-for run out; otherwise training's (0 finished, 143 after --stop,
130 when Ctrl-C detached this command).
"""

import os
import shutil
import signal
import sys
import tempfile

from tpu import options
from tpu.decisions import Stop
from tpu.runner import DryRunner, SubprocessRunner, SystemClock
from tpu.supervise import Launcher

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Terminated(Exception):
  """SIGTERM to this launcher (not to training)."""


def main(argv, environ=os.environ, runner=None, clock=None, out=sys.stdout,
         err=sys.stderr):
  """The launcher, to its exit status. Tests pass a fake runner and clock."""
  try:
    o = options.parse(argv, environ, REPO)
    if runner is None and not o.dry_run and not shutil.which('gcloud'):
      options.fail('gcloud not found; install the Google Cloud CLI (or use '
                   '--dry-run)')
  except options.Help:
    print(__doc__, end='', file=out)
    return 0
  except options.UsageError as e:
    print(f'error: {e}', file=err)
    return 2
  if runner is None:
    runner = DryRunner(out) if o.dry_run else SubprocessRunner(err)
  with tempfile.TemporaryDirectory() as folder:
    launcher = Launcher(o, runner, clock or SystemClock(), folder, REPO, err)
    try:
      return launcher.run()
    except Stop as e:
      print(f'error: {e}', file=err)
      return e.status
    except KeyboardInterrupt:
      return launcher.detach(130)
    except Terminated:
      return launcher.detach(143)


def on_sigterm(*_):
  signal.signal(signal.SIGTERM, signal.SIG_DFL)
  raise Terminated()


if __name__ == '__main__':
  signal.signal(signal.SIGTERM, on_sigterm)
  sys.exit(main(sys.argv[1:]))
