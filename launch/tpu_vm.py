#!/usr/bin/env python3
"""Train alexnet_jax on a Cloud TPU VM slice (every host runs one process),
detached from this terminal, and keep it running through preemptions.

Usage:
  launch/tpu_vm.py --workdir=gs://BUCKET/DIR --tfds-data-dir=gs://BUCKET/tfds
      [options] [-- ALEXNET_JAX_MAIN_ARGS...]      start (or rejoin) a run
  launch/tpu_vm.py --name=NAME --zone=ZONE --attach   follow the running one
  launch/tpu_vm.py --name=NAME --zone=ZONE --logs [--workdir=gs://...]
  launch/tpu_vm.py --name=NAME --zone=ZONE --stop     stop it (it saves)

Start: gets the TPU VM (creates it, or reuses it), copies this checkout to
every worker, stops training processes a previous launcher left there,
installs requirements-train.txt plus jax[tpu]==0.10.2 into a venv on every
worker, then starts `python -m alexnet_jax.main --config.platform=tpu ...`
on all workers at once, detached (launch/tpu_worker.sh: its own session, a
log file per run, a lock per worker), and follows worker 0's log here. JAX
finds the other hosts by itself on Cloud TPU, so no coordinator flags are
passed. If this exact command is already training on the VM, it is
followed, not started again. Closing the terminal, Ctrl-C or a lost
connection never stops training.

Options (--opt=VALUE or --opt VALUE):
  --name NAME              TPU VM name (default: alexnet-jax)
  --zone ZONE              (default: us-central2-b)
  --accelerator-type TYPE  FAMILY-SIZE, e.g. v4-32, v5litepod-16, v5p-8,
                           v6e-8 (default: v4-32)
  --version RUNTIME        TPU software version; default by family:
                             v2, v3, v4   tpu-ubuntu2204-base
                             v5litepod    v2-alpha-tpuv5-lite   (TPU v5e)
                             v5p          v2-alpha-tpuv5
                             v6e          v2-alpha-tpuv6e       (Trillium)
                           other families need an explicit --version
  --project PROJECT        GCP project (default: gcloud's configured one)
  --config PATH            config file in this repo (default: configs/cifar10.py)
  --workdir gs://...       required to start; checkpoints, metrics and logs,
                           shared by all hosts, so it must be a GCS path
  --tfds-data-dir gs://... TFDS data dir (becomes --config.tfds_data_dir)
  --data-dir gs://...      data_dir (becomes --config.data_dir); one of the
                           two is required to start. Data must be on gs://:
                           a worker's disk is not seen by the other hosts
                           (so is a --config.data_dir after --)
  --queued                 get the TPU through a queued resource (named like
                           the VM): `queued-resources create`, then wait
                           until it is ACTIVE, printing its state every
                           TPU_POLL_SECONDS (env, default 30)
  --spot                   Spot TPU: cheaper, can be preempted at any time
  --reserved               use reserved capacity (not with --spot)
  --valid-until-duration D with --queued: give up the request if it is not
                           filled within D (gcloud duration, e.g. 6h)
  --node-count N           only 1: Multislice (N > 1 slices) is not supported
  --retry-for DURATION     how long to keep trying to get the TPU back
                           (stockouts, a queued request not filled) and to
                           reconnect, counted from when the trouble began
                           (default: 24h; 90m, 2d, 3600 (seconds) also work)
  --max-restarts N         restarts of training (after a preemption, a lost
                           process, a SIGTERM nobody asked for) allowed per
                           --restart-window (default: 3; 0 disables)
  --restart-window D       (default: 24h)
  --stop-grace SECONDS     how long training processes get to save a
                           checkpoint after SIGTERM before SIGKILL (--stop,
                           and leftovers before a start; default: 120)
  --worker-python CMD      interpreter for the workers' venv, installed with
                           apt when missing (default: python3.11; JAX 0.10
                           needs >= 3.11, Ubuntu 22.04 ships 3.10)
  --attach                 follow the training running on the VM (worker 0's
                           log) until it ends, reconnecting when the
                           connection drops; exits with training's status.
                           Restarts nothing; needs only --name and --zone
  --logs                   print the latest run's log: worker 0's, or when
                           the VM is gone the copy in --workdir
  --stop                   SIGTERM to training on every worker: it saves a
                           checkpoint and exits (the same command resumes).
                           The VM is left running
  --dry-run                print every command (`+ ...`, one per line), run
                           none; shows the path for a VM that does not exist
  -h, --help               show this help
  -- ARGS...               passed to alexnet_jax.main after
                           --config.platform=tpu, e.g. -- --config.num_epochs=90

An existing VM called NAME (`tpu-vm describe`):
  READY                    reused (it must have the same accelerator type:
                           a VM of another type is an error, never deleted)
  PREEMPTED or TERMINATED  deleted (with its queued resource, if it came
                           from one) and created again
  STOPPED                  started (`tpu-vm start`)
  CREATING, STARTING, ...  waited for
With --queued and no VM, an existing queued resource NAME is waited for;
one that is FAILED or SUSPENDED is deleted and requested again.

Preemptions and failures: when training ends other than by finishing, the
VM is described again. PREEMPTED, gone or any other non-READY state: the VM
is brought back as above, the code copied and installed again, and the same
training command started; it resumes from the last checkpoint in the
workdir. A create that fails for capacity (a stockout) or availability is
tried again with back-off (TPU_RETRY_SECONDS, default 60, doubling up to
30 min) until --retry-for has passed; any other create error stops the
launcher. On a READY VM, exit status 75 (a process was lost) and 143/130 (a
SIGTERM/SIGINT nobody asked for) restart training in place; 2 (a usage
error) and other failures do not. Each restart uses one of --max-restarts
per --restart-window. A lost ssh connection (status 255) to a READY VM is
not a restart: training goes on there and the launcher reconnects, with
back-off, until --retry-for.

Every decision (reuse, create, wait, retry, reconnect, restart, give up) is
one line `tpu_vm.py: ...` here and one timestamped line in
WORKDIR/logs/launcher.log (uploaded after each decision with `gcloud
storage cp`: a command --dry-run shows, and a real run leaves unshown).

Watch: this command follows worker 0's log; --attach follows it again from
anywhere. Logs: on each worker, ~/alexnet_jax_runs/<run>/log
(~/alexnet_jax_runs/current is the latest); worker 0's is copied to
WORKDIR/logs/<run>.log every TPU_LOG_COPY_SECONDS (default 60) and when it
ends; --logs prints it. Stop: --stop (Ctrl-C here only detaches).

The TPU VM's service account needs read/write access to both buckets. The
VM is left running; delete it with
  gcloud compute tpus tpu-vm delete NAME --zone=ZONE
or, with --queued,
  gcloud compute tpus queued-resources delete NAME --zone=ZONE --force

Exit status: bad or missing options, a VM NAME of another accelerator type,
or another training command running on the VM: one line `error: ...` on
stderr, 2. A queued resource that ends FAILED or SUSPENDED while waited
for, a create error that is not about capacity, or --retry-for running out:
one `error: ...` line, 1. Otherwise training's (0 when it finished; 143
after --stop; 130 when Ctrl-C detached this command from the run).
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
