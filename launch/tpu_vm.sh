#!/usr/bin/env bash
# Train alexnet_jax on a Cloud TPU VM slice (every host runs one process),
# detached from this terminal, and keep it running through preemptions.
#
# Usage:
#   launch/tpu_vm.sh --workdir=gs://BUCKET/DIR --tfds-data-dir=gs://BUCKET/tfds
#       [options] [-- ALEXNET_JAX_MAIN_ARGS...]      start (or rejoin) a run
#   launch/tpu_vm.sh --name=NAME --zone=ZONE --attach   follow the running one
#   launch/tpu_vm.sh --name=NAME --zone=ZONE --logs [--workdir=gs://...]
#   launch/tpu_vm.sh --name=NAME --zone=ZONE --stop     stop it (it saves)
#
# Start: gets the TPU VM (creates it, or reuses it), copies this checkout to
# every worker, stops training processes a previous launcher left there,
# installs requirements-train.txt plus jax[tpu]==0.10.2 into a venv on every
# worker, then starts `python -m alexnet_jax.main` on all workers at once,
# detached (launch/tpu_worker.sh: its own session, a log file per run, a lock
# per worker), and follows worker 0's log here. JAX finds the other hosts by
# itself on Cloud TPU, so no coordinator flags are passed. If this exact
# command is already training on the VM, it is followed, not started again.
# Closing the terminal, Ctrl-C or a lost connection never stops training.
#
# Options (--opt=VALUE or --opt VALUE):
#   --name NAME              TPU VM name (default: alexnet-jax)
#   --zone ZONE              (default: us-central2-b)
#   --accelerator-type TYPE  FAMILY-SIZE, e.g. v4-32, v5litepod-16, v5p-8,
#                            v6e-8 (default: v4-32)
#   --version RUNTIME        TPU software version; default by family:
#                              v2, v3, v4   tpu-ubuntu2204-base
#                              v5litepod    v2-alpha-tpuv5-lite   (TPU v5e)
#                              v5p          v2-alpha-tpuv5
#                              v6e          v2-alpha-tpuv6e       (Trillium)
#                            other families need an explicit --version
#   --project PROJECT        GCP project (default: gcloud's configured one)
#   --config PATH            config file in this repo (default: configs/cifar10.py)
#   --workdir gs://...       required to start; checkpoints, metrics and logs,
#                            shared by all hosts, so it must be a GCS path
#   --tfds-data-dir gs://... TFDS data dir (becomes --config.tfds_data_dir)
#   --data-dir gs://...      data_dir (becomes --config.data_dir); one of the
#                            two is required to start. Data must be on gs://:
#                            a worker's disk is not seen by the other hosts
#                            (so is a --config.data_dir after --)
#   --queued                 get the TPU through a queued resource (named like
#                            the VM): `queued-resources create`, then wait
#                            until it is ACTIVE, printing its state every
#                            TPU_POLL_SECONDS (env, default 30)
#   --spot                   Spot TPU: cheaper, can be preempted at any time
#   --reserved               use reserved capacity (not with --spot)
#   --valid-until-duration D with --queued: give up the request if it is not
#                            filled within D (gcloud duration, e.g. 6h)
#   --node-count N           only 1: Multislice (N > 1 slices) is not supported
#   --retry-for DURATION     how long to keep trying to get the TPU back
#                            (stockouts, a queued request not filled) and to
#                            reconnect, counted from when the trouble began
#                            (default: 24h; 90m, 2d, 3600 (seconds) also work)
#   --max-restarts N         restarts of training (after a preemption, a lost
#                            process, a SIGTERM nobody asked for) allowed per
#                            --restart-window (default: 3; 0 disables)
#   --restart-window D       (default: 24h)
#   --stop-grace SECONDS     how long training processes get to save a
#                            checkpoint after SIGTERM before SIGKILL (--stop,
#                            and leftovers before a start; default: 120)
#   --worker-python CMD      interpreter for the workers' venv, installed with
#                            apt when missing (default: python3.11; JAX 0.10
#                            needs >= 3.11, Ubuntu 22.04 ships 3.10)
#   --attach                 follow the training running on the VM (worker 0's
#                            log) until it ends, reconnecting when the
#                            connection drops; exits with training's status.
#                            Restarts nothing; needs only --name and --zone
#   --logs                   print the latest run's log: worker 0's, or when
#                            the VM is gone the copy in --workdir
#   --stop                   SIGTERM to training on every worker: it saves a
#                            checkpoint and exits (the same command resumes).
#                            The VM is left running
#   --dry-run                print every command (`+ ...`, one per line), run
#                            none; shows the path for a VM that does not exist
#   -h, --help               show this help
#   -- ARGS...               passed to alexnet_jax.main, e.g. -- --config.num_epochs=90
#
# An existing VM called NAME (`tpu-vm describe`):
#   READY                    reused (it must have the same accelerator type:
#                            a VM of another type is an error, never deleted)
#   PREEMPTED or TERMINATED  deleted (with its queued resource, if it came
#                            from one) and created again
#   STOPPED                  started (`tpu-vm start`)
#   CREATING, STARTING, ...  waited for
# With --queued and no VM, an existing queued resource NAME is waited for;
# one that is FAILED or SUSPENDED is deleted and requested again.
#
# Preemptions and failures: when training ends other than by finishing, the
# VM is described again. PREEMPTED, gone or any other non-READY state: the VM
# is brought back as above, the code copied and installed again, and the same
# training command started; it resumes from the last checkpoint in the
# workdir. A `tpu-vm create` that fails for capacity (a stockout) or
# availability is tried again with back-off (TPU_RETRY_SECONDS, default 60,
# doubling up to 30 min) until --retry-for has passed; any other create error
# stops the launcher. On a READY VM, exit status 75 (a process was lost) and
# 143/130 (a SIGTERM/SIGINT nobody asked for) restart training in place; 2 (a
# usage error) and other failures do not. Each restart uses one of
# --max-restarts per --restart-window. A lost ssh connection (status 255) to
# a READY VM is not a restart: training goes on there and the launcher
# reconnects, with back-off, until --retry-for.
#
# Every decision (reuse, create, wait, retry, reconnect, restart, give up)
# is one line `tpu_vm.sh: ...` here and one timestamped line in
# WORKDIR/logs/launcher.log (uploaded after each decision with `gcloud
# storage cp`: a command --dry-run shows, and a real run leaves unshown).
#
# Watch: this command follows worker 0's log; --attach follows it again
# from anywhere. Logs: on each worker, ~/alexnet_jax_runs/<run>/log
# (~/alexnet_jax_runs/current is the latest); worker 0's is copied to
# WORKDIR/logs/<run>.log every TPU_LOG_COPY_SECONDS (default 60) and when it
# ends; --logs prints it. Stop: --stop (or Ctrl-C here only detaches).
#
# The TPU VM's service account needs read/write access to both buckets.
# The VM is left running; delete it with
#   gcloud compute tpus tpu-vm delete NAME --zone=ZONE
# or, with --queued,
#   gcloud compute tpus queued-resources delete NAME --zone=ZONE --force
#
# Bad or missing options, a VM NAME of another accelerator type, or another
# training command running on the VM: one line `error: ...` on stderr, exit
# status 2. A queued resource that ends FAILED or SUSPENDED while waited
# for, a create error that is not about capacity, or --retry-for running out:
# one `error: ...` line, exit status 1. Otherwise the exit status is
# training's (0 when it finished; 143 after --stop; 130 when Ctrl-C detached
# this command from the run).

set -euo pipefail

die() {
  printf 'error: %s\n' "$*" >&2
  exit 2
}

note() {
  printf 'tpu_vm.sh: %s\n' "$*" >&2
}

usage() {
  # The comment block above is the help text, so the two cannot drift apart.
  awk 'NR == 1 { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "$0"
}

name=alexnet-jax
zone=us-central2-b
accelerator_type=v4-32
version=
project=
config=configs/cifar10.py
workdir=
tfds_data_dir=
data_dir=
worker_python=python3.11
queued=0
spot=0
reserved=0
valid_until=
node_count=1
max_restarts=3
restart_window_text=24h
retry_for_text=24h
stop_grace=120
dry_run=0
mode=launch
main_args=()

set_option() {
  local key=$1 value=$2
  [[ -n $value ]] || die "$key needs a non-empty value"
  case $key in
    --name) name=$value ;;
    --zone) zone=$value ;;
    --accelerator-type) accelerator_type=$value ;;
    --version) version=$value ;;
    --project) project=$value ;;
    --config) config=$value ;;
    --workdir) workdir=$value ;;
    --tfds-data-dir) tfds_data_dir=$value ;;
    --data-dir) data_dir=$value ;;
    --worker-python) worker_python=$value ;;
    --valid-until-duration) valid_until=$value ;;
    --node-count) node_count=$value ;;
    --max-restarts) max_restarts=$value ;;
    --restart-window) restart_window_text=$value ;;
    --retry-for) retry_for_text=$value ;;
    --stop-grace) stop_grace=$value ;;
  esac
}

set_mode() {
  [[ $mode == launch || $mode == "${1#--}" ]] || die "--$mode and $1 exclude each other"
  mode=${1#--}
}

valued='--name|--zone|--accelerator-type|--version|--project|--config|--workdir|--tfds-data-dir|--data-dir|--worker-python|--valid-until-duration|--node-count|--max-restarts|--restart-window|--retry-for|--stop-grace'
switches='--dry-run|--queued|--spot|--reserved|--attach|--logs|--stop'
while (($#)); do
  case $1 in
    --) shift; main_args=("$@"); break ;;
    -h|--help) usage; exit 0 ;;
    --dry-run) dry_run=1 ;;
    --queued) queued=1 ;;
    --spot) spot=1 ;;
    --reserved) reserved=1 ;;
    --attach|--logs|--stop) set_mode "$1" ;;
    --*=*)
      key=${1%%=*}
      [[ ! $key =~ ^($switches)$ ]] || die "$key takes no value"
      [[ $key =~ ^($valued)$ ]] || die "unknown option: $key (see --help)"
      set_option "$key" "${1#*=}" ;;
    --*)
      [[ $1 =~ ^($valued)$ ]] || die "unknown option: $1 (see --help)"
      # A following option is a forgotten value, not the value.
      [[ $# -ge 2 && $2 != -* ]] || die "$1 needs a value"
      set_option "$1" "$2"
      shift ;;
    *) die "unexpected argument: $1 (arguments for alexnet_jax.main go after --)" ;;
  esac
  shift
done

gs_path() {  # gs_path WHAT VALUE WHY
  [[ $2 =~ ^gs://[^/]+ ]] || die "$1 must be a gs:// path ($3), got: $2"
}

if [[ $mode == launch ]]; then
  [[ -n $workdir ]] || die "--workdir is required (a gs:// path shared by all TPU hosts)"
  [[ -n $tfds_data_dir || -n $data_dir ]] ||
    die "--tfds-data-dir is required (a gs:// TFDS data dir), or --data-dir (a gs:// data_dir)"
else
  ((${#main_args[@]} == 0)) || die "arguments after -- are for starting a run, not --$mode"
fi
[[ -z $workdir ]] || gs_path --workdir "$workdir" 'every TPU host writes there'
[[ -z $tfds_data_dir ]] || gs_path --tfds-data-dir "$tfds_data_dir" 'every TPU host reads it'
[[ -z $data_dir ]] || gs_path --data-dir "$data_dir" 'every TPU host reads it; a worker'"'"'s disk is its own'
for arg in ${main_args[@]+"${main_args[@]}"}; do
  case $arg in
    --config.data_dir=*|--config.tfds_data_dir=*)
      gs_path "${arg%%=*}" "${arg#*=}" 'every TPU host reads it; a worker'"'"'s disk is its own' ;;
  esac
done
# GCP's rule for TPU node names; checked here rather than minutes into create.
[[ $name =~ ^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$ ]] ||
  die "--name must be lowercase letters, digits and hyphens, starting with a letter, got: $name"
[[ $worker_python =~ ^[A-Za-z0-9._+-]+$ ]] ||
  die "--worker-python must be a command name such as python3.11, got: $worker_python"

# The runtime version follows the accelerator family (Google's "TPU software
# versions" table); an explicit --version wins.
[[ $accelerator_type =~ ^([a-z][a-z0-9]*)-([1-9][0-9]*)$ ]] ||
  die "--accelerator-type must be FAMILY-SIZE such as v4-32, v5litepod-16, v5p-8 or v6e-8, got: $accelerator_type"
family=${BASH_REMATCH[1]}
if [[ -z $version ]]; then
  case $family in
    v2|v3|v4) version=tpu-ubuntu2204-base ;;
    v5litepod) version=v2-alpha-tpuv5-lite ;;
    v5p) version=v2-alpha-tpuv5 ;;
    v6e) version=v2-alpha-tpuv6e ;;
    *) die "no default --version for accelerator family $family (known: v2, v3, v4, v5litepod (v5e), v5p, v6e); pass --version explicitly" ;;
  esac
fi

# A duration: N seconds, or N followed by s, m, h or d.
seconds_of() {  # seconds_of OPTION TEXT: prints the seconds, or dies
  local n unit
  [[ $2 =~ ^([0-9]+)([smhd]?)$ ]] ||
    die "$1 must be a duration such as 90m, 24h, 2d or 3600 (seconds), got: $2"
  n=$((10#${BASH_REMATCH[1]})) unit=${BASH_REMATCH[2]}
  case $unit in
    m) n=$((n * 60)) ;;
    h) n=$((n * 3600)) ;;
    d) n=$((n * 86400)) ;;
  esac
  printf '%s' "$n"
}

[[ $node_count =~ ^[1-9][0-9]*$ ]] || die "--node-count must be a positive integer, got: $node_count"
((node_count == 1)) ||
  die "--node-count=$node_count: Multislice (more than one slice) is not supported by this launcher; use one larger slice"
[[ $max_restarts =~ ^[0-9]+$ ]] || die "--max-restarts must be a non-negative integer, got: $max_restarts"
[[ $stop_grace =~ ^[0-9]+$ ]] || die "--stop-grace must be a non-negative integer (seconds), got: $stop_grace"
restart_window=$(seconds_of --restart-window "$restart_window_text") || exit 2
retry_for=$(seconds_of --retry-for "$retry_for_text") || exit 2
((restart_window > 0)) || die "--restart-window must be longer than 0, got: $restart_window_text"
((!(spot && reserved))) || die "--spot and --reserved exclude each other"
[[ -z $valid_until || $queued == 1 ]] || die "--valid-until-duration needs --queued"
[[ -z $valid_until || $valid_until =~ ^[0-9][0-9a-z]*$ ]] ||
  die "--valid-until-duration must be a gcloud duration such as 6h or 2d, got: $valid_until"
for var in TPU_POLL_SECONDS TPU_RETRY_SECONDS TPU_LOG_COPY_SECONDS; do
  [[ ${!var:-1} =~ ^[0-9]+$ ]] || die "$var must be a non-negative integer, got: ${!var}"
done
poll_seconds=${TPU_POLL_SECONDS:-30}
retry_base=${TPU_RETRY_SECONDS:-60}
log_copy_seconds=${TPU_LOG_COPY_SECONDS:-60}
((log_copy_seconds > 0)) || die "TPU_LOG_COPY_SECONDS must be a positive integer, got: 0"

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# config_flags accepts PATH:ARG; only the path has to exist.
[[ -f $repo/${config%%:*} ]] || die "--config ${config%%:*} not found in $repo (it is shipped with the code)"

if ((!dry_run)) && ! command -v gcloud >/dev/null 2>&1; then
  die "gcloud not found; install the Google Cloud CLI (or use --dry-run)"
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# shellcheck source=launch/tpu_vm_cloud.sh
source "$repo/launch/tpu_vm_cloud.sh"
# shellcheck source=launch/tpu_vm_run.sh
source "$repo/launch/tpu_vm_run.sh"

case $mode in
  launch)
    trap 'detach 130' INT
    trap 'detach 143' TERM
    init_decisions
    bring_up
    supervise launch ;;
  attach)
    init_decisions
    require_ready "nothing to attach to"
    supervise attach ;;
  logs) show_logs ;;
  stop)
    init_decisions
    stop_training ;;
esac
