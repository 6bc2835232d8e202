#!/usr/bin/env bash
# Train alexnet_jax on a Cloud TPU VM slice (every host runs one process).
#
# Usage:
#   launch/tpu_vm.sh --workdir=gs://BUCKET/DIR --tfds-data-dir=gs://BUCKET/tfds
#       [options] [-- ALEXNET_JAX_MAIN_ARGS...]
#
# Gets the TPU VM (creates it, or reuses it when it already exists), copies
# this checkout to every worker, stops training processes a previous run left
# there, installs requirements-train.txt plus jax[tpu]==0.10.2 into a venv on
# every worker, then runs `python -m alexnet_jax.main` on all workers at once.
# JAX finds the other hosts by itself on Cloud TPU, so no coordinator flags
# are passed.
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
#   --workdir gs://...       required; checkpoints and metrics, shared by all
#                            hosts, so it must be a GCS path
#   --tfds-data-dir gs://... required; TFDS data dir (becomes
#                            --config.tfds_data_dir)
#   --queued                 get the TPU through a queued resource (named like
#                            the VM): `queued-resources create`, then wait
#                            until it is ACTIVE, printing its state every
#                            TPU_POLL_SECONDS (env, default 30)
#   --spot                   Spot TPU: cheaper, can be preempted at any time
#   --reserved               use reserved capacity (not with --spot)
#   --valid-until-duration D with --queued: give up the request if it is not
#                            filled within D (gcloud duration, e.g. 6h)
#   --node-count N           only 1: Multislice (N > 1 slices) is not supported
#   --max-restarts N         restarts after a preemption or a lost ssh
#                            connection (default: 3; 0 disables)
#   --stop-grace SECONDS     how long leftover training processes get to save a
#                            checkpoint after SIGTERM before SIGKILL (default: 120)
#   --worker-python CMD      interpreter for the workers' venv, installed with
#                            apt when missing (default: python3.11; JAX 0.10
#                            needs >= 3.11, Ubuntu 22.04 ships 3.10)
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
# Preemption and restarts: training runs in the foreground over ssh. When it
# fails, the VM is described again. PREEMPTED, TERMINATED, gone or any other
# non-READY state: the VM is brought back as above (recreated, started or
# waited for), the code copied and installed again, and the same training
# command rerun; it resumes from the last checkpoint in the workdir. READY and ssh exit status 255 (connection
# lost): the same command is rerun on the same VM. Exit status 2 (a usage
# error in ARGS) and other failures on a READY VM are not restarted. Each
# restart is logged as one `restart K/N: ...` line on stderr. A rerun never
# finds the TPU busy: before training, leftover alexnet_jax.main processes of
# an earlier run on the workers get SIGTERM (they save a checkpoint and exit),
# then SIGKILL after --stop-grace seconds. Running this script again by hand
# after it stopped works the same way.
#
# The TPU VM's service account needs read/write access to both buckets.
# The VM is left running; delete it with
#   gcloud compute tpus tpu-vm delete NAME --zone=ZONE
# or, with --queued,
#   gcloud compute tpus queued-resources delete NAME --zone=ZONE --force
#
# Bad or missing options, or a VM NAME of another accelerator type: one line
# `error: ...` on stderr, exit status 2. A queued resource that ends FAILED or
# SUSPENDED while waited for: one `error: ...` line, exit status 1. Otherwise
# the exit status is training's (0 when it finished).

set -euo pipefail

die() {
  printf 'error: %s\n' "$*" >&2
  exit 2
}

# A failure that is not the user's input (a queued resource that FAILED).
fail() {
  printf 'error: %s\n' "$*" >&2
  exit 1
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
worker_python=python3.11
queued=0
spot=0
reserved=0
valid_until=
node_count=1
max_restarts=3
stop_grace=120
dry_run=0
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
    --worker-python) worker_python=$value ;;
    --valid-until-duration) valid_until=$value ;;
    --node-count) node_count=$value ;;
    --max-restarts) max_restarts=$value ;;
    --stop-grace) stop_grace=$value ;;
  esac
}

valued='--name|--zone|--accelerator-type|--version|--project|--config|--workdir|--tfds-data-dir|--worker-python|--valid-until-duration|--node-count|--max-restarts|--stop-grace'
switches='--dry-run|--queued|--spot|--reserved'
while (($#)); do
  case $1 in
    --) shift; main_args=("$@"); break ;;
    -h|--help) usage; exit 0 ;;
    --dry-run) dry_run=1 ;;
    --queued) queued=1 ;;
    --spot) spot=1 ;;
    --reserved) reserved=1 ;;
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

[[ -n $workdir ]] || die "--workdir is required (a gs:// path shared by all TPU hosts)"
[[ $workdir =~ ^gs://[^/]+ ]] ||
  die "--workdir must be a gs:// path (every TPU host writes there), got: $workdir"
[[ -n $tfds_data_dir ]] || die "--tfds-data-dir is required (a gs:// TFDS data dir)"
[[ $tfds_data_dir =~ ^gs://[^/]+ ]] ||
  die "--tfds-data-dir must be a gs:// path (every TPU host reads it), got: $tfds_data_dir"
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

[[ $node_count =~ ^[1-9][0-9]*$ ]] || die "--node-count must be a positive integer, got: $node_count"
((node_count == 1)) ||
  die "--node-count=$node_count: Multislice (more than one slice) is not supported by this launcher; use one larger slice"
[[ $max_restarts =~ ^[0-9]+$ ]] || die "--max-restarts must be a non-negative integer, got: $max_restarts"
[[ $stop_grace =~ ^[0-9]+$ ]] || die "--stop-grace must be a non-negative integer (seconds), got: $stop_grace"
((!(spot && reserved))) || die "--spot and --reserved exclude each other"
[[ -z $valid_until || $queued == 1 ]] || die "--valid-until-duration needs --queued"
[[ -z $valid_until || $valid_until =~ ^[0-9][0-9a-z]*$ ]] ||
  die "--valid-until-duration must be a gcloud duration such as 6h or 2d, got: $valid_until"
poll_seconds=${TPU_POLL_SECONDS:-30}
[[ $poll_seconds =~ ^[0-9]+$ ]] ||
  die "TPU_POLL_SECONDS must be a non-negative integer, got: $poll_seconds"

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# config_flags accepts PATH:ARG; only the path has to exist.
[[ -f $repo/${config%%:*} ]] || die "--config ${config%%:*} not found in $repo (it is shipped with the code)"

if ((!dry_run)) && ! command -v gcloud >/dev/null 2>&1; then
  die "gcloud not found; install the Google Cloud CLI (or use --dry-run)"
fi

# Every external command goes through run or query, so --dry-run shows
# exactly what a real run would execute: `+ command` on stdout when dry, on
# stderr before running it when real.
show() {
  local line='+' arg
  for arg in "$@"; do line+=" $(printf '%q' "$arg")"; done
  if ((dry_run)); then printf '%s\n' "$line"; else printf '%s\n' "$line" >&2; fi
}

run() {
  show "$@"
  ((dry_run)) || "$@"
}

# query VAR COMMAND...: a question whose failure is an answer ("not found"):
# VAR gets COMMAND's stdout, or "" when it fails and in a dry run.
query() {
  local query_var=$1 query_out=
  shift
  show "$@"
  if ((!dry_run)); then query_out=$("$@" 2>/dev/null) || query_out=; fi
  printf -v "$query_var" '%s' "$query_out"
}

pause() {
  ((dry_run)) || sleep "$poll_seconds"
}

gcloud_flags=(--zone="$zone")
if [[ -n $project ]]; then gcloud_flags+=(--project="$project"); fi
tier_flags=()
if ((spot)); then tier_flags+=(--spot); fi
if ((reserved)); then tier_flags+=(--reserved); fi
qr=$name  # the queued resource, when --queued, is named like the VM

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
tarball=$tmp/alexnet_jax.tar.gz

# node_state, node_type, node_qr: the VM's state ("" when it does not exist),
# accelerator type and the queued resource it came from (if any).
describe_node() {
  local out
  query out gcloud compute tpus tpu-vm describe "$name" "${gcloud_flags[@]}" \
    --format='value(state,acceleratorType,queuedResource)'
  node_state= node_type= node_qr=
  IFS=$'\t' read -r node_state node_type node_qr <<<"$out" || true
}

delete_node() {
  if [[ -n $node_qr ]]; then
    # A VM from a queued resource goes with it; --force deletes its nodes.
    run gcloud compute tpus queued-resources delete "${node_qr##*/}" \
      "${gcloud_flags[@]}" --force --quiet
  else
    run gcloud compute tpus tpu-vm delete "$name" "${gcloud_flags[@]}" --quiet
  fi
}

create_queued() {
  local extra=()
  if [[ -n $valid_until ]]; then extra+=(--valid-until-duration="$valid_until"); fi
  run gcloud compute tpus queued-resources create "$qr" "${gcloud_flags[@]}" \
    --node-id="$name" --accelerator-type="$accelerator_type" \
    --runtime-version="$version" ${tier_flags[@]+"${tier_flags[@]}"} \
    ${extra[@]+"${extra[@]}"}
}

# Polls the queued resource until it is ACTIVE (its VM exists then).
wait_queued() {
  local state
  while :; do
    query state gcloud compute tpus queued-resources describe "$qr" \
      "${gcloud_flags[@]}" --format='value(state.state)'
    ((!dry_run)) || return 0
    case $state in
      ACTIVE) return 0 ;;
      '') fail "queued resource $qr not found while waiting for it (rerun to request it again)" ;;
      FAILED|SUSPENDING|SUSPENDED)
        fail "queued resource $qr is $state; see: gcloud compute tpus queued-resources describe $qr --zone=$zone (rerun to delete it and request it again)" ;;
      *) note "queued resource $qr is $state; checking again in ${poll_seconds}s" ;;
    esac
    pause
  done
}

# Leaves a READY VM of the requested type called $name.
acquire() {
  local qstate
  while :; do
    describe_node
    if [[ -z $node_state ]]; then
      if ((!queued)); then
        run gcloud compute tpus tpu-vm create "$name" "${gcloud_flags[@]}" \
          --accelerator-type="$accelerator_type" --version="$version" \
          ${tier_flags[@]+"${tier_flags[@]}"}
        return 0
      fi
      query qstate gcloud compute tpus queued-resources describe "$qr" \
        "${gcloud_flags[@]}" --format='value(state.state)'
      case $qstate in
        '') create_queued ;;
        FAILED|SUSPENDED)
          note "queued resource $qr is $qstate; deleting it and requesting again"
          run gcloud compute tpus queued-resources delete "$qr" "${gcloud_flags[@]}" --quiet
          create_queued ;;
        SUSPENDING|DELETING)
          note "queued resource $qr is $qstate; checking again in ${poll_seconds}s"
          pause
          continue ;;
        *) note "waiting for the existing queued resource $qr ($qstate)" ;;
      esac
      wait_queued
      ((!dry_run)) || return 0
      continue  # describe the VM the queued resource made
    fi
    if [[ $node_type != "$accelerator_type" ]]; then
      local how="gcloud compute tpus tpu-vm delete $name --zone=$zone"
      if [[ -n $node_qr ]]; then
        how="gcloud compute tpus queued-resources delete ${node_qr##*/} --zone=$zone --force"
      fi
      die "TPU VM $name exists with accelerator type ${node_type:-unknown}, not $accelerator_type; delete it ($how) or pick another --name"
    fi
    case $node_state in
      READY)
        note "using TPU VM $name (READY, $node_type)"
        return 0 ;;
      PREEMPTED|TERMINATED)
        note "TPU VM $name is $node_state; deleting it to create it again"
        delete_node ;;
      STOPPED)
        run gcloud compute tpus tpu-vm start "$name" "${gcloud_flags[@]}" ;;
      *)
        note "TPU VM $name is $node_state; checking again in ${poll_seconds}s"
        pause ;;
    esac
  done
}

# One tarball instead of scp --recurse: no .git/venvs, and one file per worker.
run tar -czf "$tarball" --exclude=.git --exclude=.venv --exclude=venv \
  --exclude=workdirs --exclude=__pycache__ --exclude=.pytest_cache -C "$repo" .

copy_code() {
  run gcloud compute tpus tpu-vm scp "$tarball" "$name:alexnet_jax.tar.gz" \
    "${gcloud_flags[@]}" --worker=all
}

# Training processes a previous run left on the workers (an ssh connection
# that dropped does not stop them) hold the TPU. SIGTERM makes them save a
# checkpoint and exit; SIGKILL after the grace period. The pattern is the
# venv's python running alexnet_jax.main; `[.]` keeps it from matching the
# shell that runs this command, whose text holds the pattern itself.
stop_cmd="pat=\"\$HOME/alexnet_jax_venv/bin/python -m alexnet_jax[.]main\"; \
me=\$(id -u); \
pids=\$(pgrep -u \"\$me\" -f \"\$pat\") || exit 0; \
echo \"\$(hostname): stopping leftover training processes\" \$pids >&2; \
kill -TERM \$pids 2>/dev/null; \
i=0; \
while [ \$i -lt $stop_grace ] && pgrep -u \"\$me\" -f \"\$pat\" >/dev/null; do sleep 1; i=\$((i + 1)); done; \
pkill -KILL -u \"\$me\" -f \"\$pat\"; \
while pgrep -u \"\$me\" -f \"\$pat\" >/dev/null; do sleep 1; done; \
exit 0"

stop_leftovers() {
  run gcloud compute tpus tpu-vm ssh "$name" "${gcloud_flags[@]}" --worker=all \
    --command="$stop_cmd"
}

py=$(printf '%q' "$worker_python")
# The venv lives outside ~/alexnet_jax so re-uploading the code keeps it.
setup="set -e; \
if ! command -v $py >/dev/null; then \
sudo apt-get -o DPkg::Lock::Timeout=600 update -qq && \
sudo DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq $py-venv; fi; \
rm -rf ~/alexnet_jax && mkdir ~/alexnet_jax && \
tar -xzf ~/alexnet_jax.tar.gz -C ~/alexnet_jax && rm ~/alexnet_jax.tar.gz; \
[ -x ~/alexnet_jax_venv/bin/python ] || $py -m venv ~/alexnet_jax_venv; \
~/alexnet_jax_venv/bin/python -m pip install -q --upgrade pip; \
~/alexnet_jax_venv/bin/python -m pip install -q -r ~/alexnet_jax/requirements-train.txt 'jax[tpu]==0.10.2'"

install_deps() {
  run gcloud compute tpus tpu-vm ssh "$name" "${gcloud_flags[@]}" --worker=all \
    --command="$setup"
}

# Copy, stop leftovers, install: leftovers stop before the install replaces
# the code and venv they are still running from.
prepare() {
  copy_code
  stop_leftovers
  install_deps
}

train_cmd="cd ~/alexnet_jax && ~/alexnet_jax_venv/bin/python -m alexnet_jax.main"
for arg in --config="$config" --workdir="$workdir" \
    --config.tfds_data_dir="$tfds_data_dir" ${main_args[@]+"${main_args[@]}"}; do
  train_cmd+=" $(printf '%q' "$arg")"
done

acquire
prepare
restarts=0
while :; do
  # All workers must start together: each waits for the others in
  # jax.distributed.initialize.
  rc=0
  run gcloud compute tpus tpu-vm ssh "$name" "${gcloud_flags[@]}" --worker=all \
    --command="$train_cmd" || rc=$?
  ((rc != 0)) || exit 0
  if ((rc == 2)); then
    note "training exited with status 2 (a usage error in its arguments); not restarting"
    exit 2
  fi
  if ((restarts >= max_restarts)); then
    note "training failed with exit status $rc; no restarts left (--max-restarts=$max_restarts)"
    exit "$rc"
  fi
  describe_node
  if [[ $node_state == READY ]]; then
    if ((rc != 255)); then
      note "training failed with exit status $rc on TPU VM $name (READY); not restarting"
      exit "$rc"
    fi
    restarts=$((restarts + 1))
    note "restart $restarts/$max_restarts: ssh connection lost (exit status 255), TPU VM $name is READY; rerunning training, which resumes from $workdir"
    stop_leftovers
    continue
  fi
  restarts=$((restarts + 1))
  note "restart $restarts/$max_restarts: TPU VM $name is ${node_state:-gone} (training exit status $rc); getting it back and rerunning training, which resumes from $workdir"
  acquire
  prepare
done
