#!/usr/bin/env bash
# Run N CPU processes on this machine as one JAX multi-controller job, the
# way a multi-host run works, to try multi-host code paths without a cluster.
#
# Usage:
#   launch/local_multiprocess.sh [--dry-run] N [ALEXNET_JAX_MAIN_ARGS...]
#   launch/local_multiprocess.sh 2 --config=configs/cifar10.py --workdir=/tmp/w
#
# Process i runs, started through JAX's environment variables alone:
#   JAX_PLATFORMS=cpu JAX_COORDINATOR_ADDRESS=127.0.0.1:$PORT \
#     JAX_NUM_PROCESSES=N JAX_PROCESS_ID=i $PYTHON -m alexnet_jax.main ARGS
# Process 0 (the coordinator) prints to this terminal; the others write to
# $LOGDIR/process_i.log, shown here only when that process fails.
# If any process fails, the rest are stopped and its exit status is returned.
# Ctrl-C or SIGTERM is passed on to every process as SIGTERM: together they
# finish a step, save it and exit (as a preempted multi-host job does), and
# this script exits 130 or 143; the same command then resumes. A second
# Ctrl-C or SIGTERM is passed on too: they exit at once without saving (the
# last checkpoint is intact). Processes still running KILL_GRACE seconds
# later (default 300) are killed. A process that is lost (kill -9) makes the
# others stop by themselves within --heartbeat_timeout/2 seconds (exit 75).
#
#   --dry-run   print the N commands (`+ ...`) and exit; run none
#   -h, --help  show this help
#
# Environment:
#   PYTHON  interpreter (default: the active virtualenv's python, else this
#           checkout's .venv/bin/python, else python3)
#   PORT    coordinator port (default: a free port on 127.0.0.1)
#   LOGDIR  where the logs go (default: a new temporary directory, removed
#           when every process succeeds)
#
# Bad input: one line `error: ...` on stderr, exit status 2.

set -euo pipefail

die() {
  printf 'error: %s\n' "$*" >&2
  exit 2
}

dry_run=0
case ${1:-} in
  -h|--help)
    awk 'NR == 1 { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "$0"
    exit 0 ;;
  --dry-run) dry_run=1; shift ;;
esac

(($#)) || die "missing N, the number of processes (see --help)"
n=$1
shift
[[ $n =~ ^[0-9]{1,6}$ ]] && ((10#$n > 0)) || die "N must be a positive integer, got: $n"
n=$((10#$n))

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [[ -z ${PYTHON:-} ]]; then
  if [[ -n ${VIRTUAL_ENV:-} && -x $VIRTUAL_ENV/bin/python ]]; then
    PYTHON=$VIRTUAL_ENV/bin/python
  elif [[ -x $repo/.venv/bin/python ]]; then
    PYTHON=$repo/.venv/bin/python
  else
    PYTHON=python3
  fi
fi
if [[ -n ${PORT:-} ]]; then
  [[ $PORT =~ ^[1-9][0-9]{0,4}$ ]] && ((PORT <= 65535)) ||
    die "PORT must be a TCP port number (1-65535), got: $PORT"
  port=$PORT
else
  # The kernel's choice of a free port; it could be taken again before
  # process 0 binds it, which is unlikely enough on one machine.
  port=$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])') ||
    die "could not pick a free port with $PYTHON; set PORT"
fi

command_for() {
  local id=$1
  shift
  cmd=(env JAX_PLATFORMS=cpu JAX_COORDINATOR_ADDRESS="127.0.0.1:$port"
       JAX_NUM_PROCESSES="$n" JAX_PROCESS_ID="$id"
       "$PYTHON" -m alexnet_jax.main "$@")
}

if ((dry_run)); then
  for ((i = 0; i < n; i++)); do
    command_for "$i" "$@"
    line='+'
    for arg in "${cmd[@]}"; do line+=" $(printf '%q' "$arg")"; done
    printf '%s\n' "$line"
  done
  exit 0
fi

if ((BASH_VERSINFO[0] < 5 || (BASH_VERSINFO[0] == 5 && BASH_VERSINFO[1] < 1))); then
  die "needs bash >= 5.1 (for wait -n -p), this is $BASH_VERSION"
fi
"$PYTHON" -c 'import absl, jax' 2>/dev/null ||
  die "$PYTHON cannot import jax and absl: set PYTHON to the interpreter of the venv README \"Set up\" made (or activate it)"

own_logdir=0
if [[ -z ${LOGDIR:-} ]]; then
  LOGDIR=$(mktemp -d "${TMPDIR:-/tmp}/alexnet_jax_multiprocess.XXXXXX")
  own_logdir=1
fi
mkdir -p "$LOGDIR"

# `python -m alexnet_jax.main` must import the package wherever this is run.
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"

declare -A index_of=()  # pid -> process id
pids=()

# SIGTERM to every process, then SIGKILL to any still there after $1 s.
stop_all() {
  local grace=$1 pid
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  local deadline=$((SECONDS + grace))
  for pid in "${pids[@]}"; do
    while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  done
  wait 2>/dev/null || true
}

on_second_signal() {
  trap - INT TERM
  printf 'launch: SIGTERM again to %d processes: they exit at once, without saving\n' \
    "${#pids[@]}" >&2
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
}

on_signal() {
  trap on_second_signal INT TERM
  printf 'launch: SIGTERM to %d processes: they save a checkpoint and exit\n' \
    "${#pids[@]}" >&2
  # Saving takes a step and a checkpoint write; be patient before SIGKILL.
  stop_all "${KILL_GRACE:-300}"
  exit "$1"
}
# Background jobs of a script ignore SIGINT, so Ctrl-C must be forwarded.
trap 'on_signal 130' INT
trap 'on_signal 143' TERM

for ((i = 0; i < n; i++)); do
  command_for "$i" "$@"
  if ((i == 0)); then
    "${cmd[@]}" &
  else
    "${cmd[@]}" >"$LOGDIR/process_$i.log" 2>&1 &
  fi
  pids+=($!)
  index_of[$!]=$i
done

remaining=$n
stopped=0
while ((remaining > 0)); do
  status=0
  finished=
  wait -n -p finished "${pids[@]}" || status=$?
  # Empty means wait was interrupted (the trap exits) or had nothing to wait for.
  [[ -n $finished ]] || break
  remaining=$((remaining - 1))
  i=${index_of[$finished]}
  # Drop it so stop_all and later waits only see live processes.
  for k in "${!pids[@]}"; do
    [[ ${pids[$k]} != "$finished" ]] || unset 'pids[k]'
  done
  pids=(${pids[@]+"${pids[@]}"})
  if ((status == 130 || status == 143)); then
    # Stopped by a signal (a preemption): it saved a checkpoint at the step
    # all processes agreed on, and the others are doing the same.
    printf 'launch: process %d stopped by a signal (exit %d)\n' "$i" "$status" >&2
    stopped=$status
  elif ((status != 0)); then
    trap - INT TERM
    printf 'launch: process %d exited with status %d; stopping the others\n' \
      "$i" "$status" >&2
    if ((i != 0)); then
      printf -- '----- %s -----\n' "$LOGDIR/process_$i.log" >&2
      cat "$LOGDIR/process_$i.log" >&2 || true
      printf -- '----- end of %s -----\n' "$LOGDIR/process_$i.log" >&2
    fi
    # The others wait in collectives for the failed one: no checkpoint to
    # wait for, so a short grace.
    stop_all 10
    printf 'launch: logs of processes 1..%d are in %s\n' "$((n - 1))" "$LOGDIR" >&2
    exit "$status"
  fi
done

((stopped)) && exit "$stopped"
((own_logdir)) && rm -rf "$LOGDIR"
exit 0
