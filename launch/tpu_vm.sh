#!/usr/bin/env bash
# Train alexnet_jax on a Cloud TPU VM slice (every host runs one process).
#
# Usage:
#   launch/tpu_vm.sh --workdir=gs://BUCKET/DIR --tfds-data-dir=gs://BUCKET/tfds
#       [options] [-- ALEXNET_JAX_MAIN_ARGS...]
#
# Creates the TPU VM (or reuses it when it already exists), copies this
# checkout to every worker, installs the pinned requirements plus
# jax[tpu]==0.10.2 into a venv on every worker, then runs
# `python -m alexnet_jax.main` on all workers at once. JAX finds the other
# hosts by itself on Cloud TPU, so no coordinator flags are passed.
#
# Options (--opt=VALUE or --opt VALUE):
#   --name NAME              TPU VM name (default: alexnet-jax)
#   --zone ZONE              (default: us-central2-b)
#   --accelerator-type TYPE  (default: v4-32)
#   --version RUNTIME        TPU software version (default: tpu-ubuntu2204-base)
#   --project PROJECT        GCP project (default: gcloud's configured one)
#   --config PATH            config file in this repo (default: configs/cifar10.py)
#   --workdir gs://...       required; checkpoints and metrics, shared by all
#                            hosts, so it must be a GCS path
#   --tfds-data-dir gs://... required; TFDS data dir (becomes
#                            --config.tfds_data_dir)
#   --worker-python CMD      interpreter for the workers' venv, installed with
#                            apt when missing (default: python3.11; JAX 0.10
#                            needs >= 3.11, Ubuntu 22.04 ships 3.10)
#   --dry-run                print every command (`+ ...`, one per line), run none
#   -h, --help               show this help
#   -- ARGS...               passed to alexnet_jax.main, e.g. -- --config.num_epochs=90
#
# The TPU VM's service account needs read/write access to both buckets.
# Training runs in the foreground over ssh; if the connection drops, run the
# same command again: it reuses the VM and resumes from the workdir.
# The VM is left running; delete it with
#   gcloud compute tpus tpu-vm delete NAME --zone=ZONE
#
# Bad or missing options: one line `error: ...` on stderr, exit status 2.

set -euo pipefail

die() {
  printf 'error: %s\n' "$*" >&2
  exit 2
}

usage() {
  # The comment block above is the help text, so the two cannot drift apart.
  awk 'NR == 1 { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "$0"
}

name=alexnet-jax
zone=us-central2-b
accelerator_type=v4-32
version=tpu-ubuntu2204-base
project=
config=configs/cifar10.py
workdir=
tfds_data_dir=
worker_python=python3.11
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
  esac
}

valued='--name|--zone|--accelerator-type|--version|--project|--config|--workdir|--tfds-data-dir|--worker-python'
while (($#)); do
  case $1 in
    --) shift; main_args=("$@"); break ;;
    -h|--help) usage; exit 0 ;;
    --dry-run) dry_run=1 ;;
    --*=*)
      key=${1%%=*}
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

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# config_flags accepts PATH:ARG; only the path has to exist.
[[ -f $repo/${config%%:*} ]] || die "--config ${config%%:*} not found in $repo (it is shipped with the code)"

if ((!dry_run)) && ! command -v gcloud >/dev/null 2>&1; then
  die "gcloud not found; install the Google Cloud CLI (or use --dry-run)"
fi

# Every external command goes through here, so --dry-run shows exactly what
# a real run would execute. `run --probe` is a check whose failure is an
# answer, not an error: quiet when real, "not found" when dry.
run() {
  local probe=0
  if [[ $1 == --probe ]]; then probe=1; shift; fi
  local line='+'
  local arg
  for arg in "$@"; do line+=" $(printf '%q' "$arg")"; done
  if ((dry_run)); then
    printf '%s\n' "$line"
    return $((probe))
  fi
  printf '%s\n' "$line" >&2
  if ((probe)); then
    "$@" >/dev/null 2>&1
  else
    "$@"
  fi
}

gcloud_flags=(--zone="$zone")
if [[ -n $project ]]; then gcloud_flags+=(--project="$project"); fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
tarball=$tmp/alexnet_jax.tar.gz

# One tarball instead of scp --recurse: no .git/venvs, and one file per worker.
run tar -czf "$tarball" --exclude=.git --exclude=.venv --exclude=venv \
  --exclude=workdirs --exclude=__pycache__ --exclude=.pytest_cache -C "$repo" .

if run --probe gcloud compute tpus tpu-vm describe "$name" "${gcloud_flags[@]}"; then
  printf 'reusing existing TPU VM %s\n' "$name" >&2
else
  run gcloud compute tpus tpu-vm create "$name" "${gcloud_flags[@]}" \
    --accelerator-type="$accelerator_type" --version="$version"
fi

run gcloud compute tpus tpu-vm scp "$tarball" "$name:alexnet_jax.tar.gz" \
  "${gcloud_flags[@]}" --worker=all

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
~/alexnet_jax_venv/bin/python -m pip install -q -r ~/alexnet_jax/requirements.txt 'jax[tpu]==0.10.2'"
run gcloud compute tpus tpu-vm ssh "$name" "${gcloud_flags[@]}" --worker=all \
  --command="$setup"

train_cmd="cd ~/alexnet_jax && ~/alexnet_jax_venv/bin/python -m alexnet_jax.main"
for arg in --config="$config" --workdir="$workdir" \
    --config.tfds_data_dir="$tfds_data_dir" ${main_args[@]+"${main_args[@]}"}; do
  train_cmd+=" $(printf '%q' "$arg")"
done
# All workers must start together: each waits for the others in
# jax.distributed.initialize.
run gcloud compute tpus tpu-vm ssh "$name" "${gcloud_flags[@]}" --worker=all \
  --command="$train_cmd"
