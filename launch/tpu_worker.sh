#!/usr/bin/env bash
# Runs on every worker of a Cloud TPU VM (launch/tpu_vm.py calls it over
# ssh): training detached from the ssh session, one trainer per worker, a
# log file per run, and that log followed, shown or copied to the workdir.
#
#   tpu_worker.sh start [--copy-log-to=gs://.../logs/] [--copy-every=SECONDS]
#                 -- COMMAND...
#       Starts COMMAND (the trainer) in its own session (setsid, nohup,
#       stdin from /dev/null), in this directory, its output in
#       RUNS/<run>/log, and returns. The trainer holds RUNS/train.lock
#       (flock) as long as it lives, so a second start, such as the one
#       gcloud's ssh retries after a dropped connection, starts nothing: it
#       reports the running trainer (exit 0) or, if that one runs another
#       command, says so (exit 3). On worker 0 (TPU_WORKER_ID, else the VM's
#       metadata agent-worker-number) the log is copied every --copy-every
#       seconds (default 60) and at the end, before the run's exit status is
#       written, to --copy-log-to<run>.log with `gcloud storage cp`.
#   tpu_worker.sh follow [--lines=N]
#       Prints the last N lines (default 20) of the current run's log and
#       what it adds until the trainer exits, then `training exited with
#       status S` and exits S; 200 when the run was stopped with `stop`,
#       4 when there is no run here.
#   tpu_worker.sh status [-- COMMAND...]
#       0: a trainer runs (COMMAND, if given, is its command); 3: a trainer
#       runs another command; 4: none runs. One line says which.
#   tpu_worker.sh logs
#       Prints the current (latest) run's log; 4 when there is none.
#   tpu_worker.sh stopped
#       Marks the current run as stopped on purpose (before it gets SIGTERM),
#       so that `follow` reports 200 rather than the trainer's 143.
#
# RUNS is $ALEXNET_JAX_RUNS, default ~/alexnet_jax_runs; RUNS/current links
# the latest run's directory (log, command, pid, exit_status). Every line
# this script prints starts with `HOSTNAME: `, on stderr.

set -euo pipefail

runs=${ALEXNET_JAX_RUNS:-$HOME/alexnet_jax_runs}
EXIT_STOPPED=200

say() {
  printf '%s: %s\n' "$(hostname)" "$*" >&2
}

die() {
  say "error: $*"
  exit 2
}

# Whether a trainer holds the lock, i.e. runs.
running() {
  mkdir -p "$runs"
  ! flock -n "$runs/train.lock" true
}

current() {
  readlink -f "$runs/current" 2>/dev/null || true
}

worker_id() {
  if [[ -n ${TPU_WORKER_ID:-} ]]; then
    printf '%s' "$TPU_WORKER_ID"
  else
    curl -sf -m 5 -H 'Metadata-Flavor: Google' \
      http://metadata.google.internal/computeMetadata/v1/instance/attributes/agent-worker-number ||
      printf 'unknown'
  fi
}

copy_log() {  # copy_log RUN_DIR DESTINATION: best effort
  gcloud storage cp --quiet "$1/log" "$2" >/dev/null 2>&1 ||
    printf '%s could not copy the log to %s\n' "$(date -u +%FT%TZ)" "$2" \
      >>"$1/copy_errors"
}

# wait_for TENTHS FILE...: until one FILE exists (non-empty, for pid), or
# TENTHS tenths of a second have passed.
wait_for() {
  local i f
  for ((i = 0; i < $1; i++)); do
    for f in "${@:2}"; do
      [[ $f == */pid && -s $f || $f != */pid && -e $f ]] && return 0
    done
    sleep 0.1
  done
  return 1
}

cmd_start() {
  local copy_to='' every=60
  while (($#)) && [[ $1 != -- ]]; do
    case $1 in
      --copy-log-to=*) copy_to=${1#*=} ;;
      --copy-every=*) every=${1#*=} ;;
      *) die "unknown start option: $1" ;;
    esac
    shift
  done
  [[ ${1:-} == -- ]] && shift
  (($#)) || die "start needs the training command after --"
  [[ $every =~ ^[1-9][0-9]*$ ]] || die "--copy-every must be a positive integer, got: $every"
  local want run
  want=$(printf '%q ' "$@")
  mkdir -p "$runs"
  exec 8>"$runs/.start.lock"
  flock 8  # One start at a time: a retried ssh waits for the first.
  if running; then
    run=$(current)
    if [[ $(cat "$run/command" 2>/dev/null) == "$want" ]]; then
      say "training already running (pid $(cat "$run/pid" 2>/dev/null), run ${run##*/}); not starting another"
      return 0
    fi
    say "another training command is running here (pid $(cat "$run/pid" 2>/dev/null)): $(cat "$run/command" 2>/dev/null)"
    exit 3
  fi
  [[ -z $copy_to || $(worker_id) =~ ^(0|unknown)$ ]] || copy_to=
  run=$runs/$(date -u +%Y%m%dT%H%M%SZ)-$$
  mkdir "$run"
  printf '%s' "$want" >"$run/command"
  cp "${BASH_SOURCE[0]}" "$run/tpu_worker.sh"  # Immune to a new checkout.
  ln -sfn "$run" "$runs/current"
  # Its own session, no terminal, no inherited start lock: nothing that
  # happens to this ssh session reaches it.
  setsid nohup bash "$run/tpu_worker.sh" _run "$run" "$PWD" \
    "${copy_to:+$copy_to${run##*/}.log}" "$every" -- "$@" \
    </dev/null >>"$run/log" 2>&1 8>&- &
  wait_for 300 "$run/pid" "$run/exit_status" || true
  [[ -s $run/pid ]] || die "the trainer did not start; see $run/log"
  say "started training (pid $(cat "$run/pid"), run ${run##*/}); log: $run/log"
}

# The detached part: holds the lock for the trainer's life, records its pid
# and exit status, copies the log.
cmd_run() {
  local run=$1 dir=$2 dest=$3 every=$4 pid status copier=
  shift 5
  exec 9>"$runs/train.lock"
  flock -n 9 || { echo "another trainer holds $runs/train.lock" >&2; exit 1; }
  cd "$dir"
  # The trainer inherits the lock (fd 9): it is held while either lives.
  PYTHONUNBUFFERED=1 "$@" >>"$run/log" 2>&1 </dev/null &
  pid=$!
  printf '%s\n' "$pid" >"$run/pid.tmp" && mv "$run/pid.tmp" "$run/pid"
  if [[ -n $dest ]]; then
    (while kill -0 "$pid" 2>/dev/null; do
       sleep "$every"
       copy_log "$run" "$dest"
     done) 9>&- &
    copier=$!
  fi
  status=0
  wait "$pid" || status=$?
  if [[ -n $copier ]]; then  # The last copy before the status: a follower
    kill "$copier" 2>/dev/null || true  # told the run ended finds it whole.
    copy_log "$run" "$dest"
  fi
  printf '%s\n' "$status" >"$run/exit_status.tmp" && mv "$run/exit_status.tmp" "$run/exit_status"
}

cmd_follow() {
  local lines=20 run pid status
  case ${1:-} in
    --lines=*) lines=${1#*=} ;;
    '') ;;
    *) die "unknown follow option: $1" ;;
  esac
  run=$(current)
  [[ -n $run ]] || { say "no training run here"; exit 4; }
  wait_for 300 "$run/pid" "$run/exit_status" || true
  pid=$(cat "$run/pid" 2>/dev/null || true)
  if [[ ! -e $run/exit_status && -n $pid ]]; then
    tail -n "$lines" -s 0.5 --pid="$pid" -F "$run/log" 2>/dev/null
  else
    tail -n "$lines" "$run/log"
  fi
  # The wrapper writes it after the trainer exits and its log's last copy.
  wait_for 1200 "$run/exit_status" || true
  status=$(cat "$run/exit_status" 2>/dev/null || echo 1)
  if [[ -e $run/stopped ]]; then
    say "training was stopped on purpose (exit status $status)"
    exit "$EXIT_STOPPED"
  fi
  say "training exited with status $status"
  exit "$status"
}

cmd_status() {
  local run want
  [[ ${1:-} == -- ]] && shift
  run=$(current)
  if running; then
    if (($#)); then
      want=$(printf '%q ' "$@")
      if [[ $(cat "$run/command" 2>/dev/null) != "$want" ]]; then
        say "training runs another command (pid $(cat "$run/pid" 2>/dev/null)): $(cat "$run/command" 2>/dev/null)"
        exit 3
      fi
    fi
    say "training is running (pid $(cat "$run/pid" 2>/dev/null), run ${run##*/})"
    exit 0
  fi
  if [[ -n $run && -e $run/exit_status ]]; then
    say "no training is running; the last run (${run##*/}) exited with status $(cat "$run/exit_status")"
  else
    say "no training is running"
  fi
  exit 4
}

cmd_logs() {
  local run
  run=$(current)
  [[ -n $run && -e $run/log ]] || { say "no training run here"; exit 4; }
  cat "$run/log"
}

cmd_stopped() {
  local run
  run=$(current)
  [[ -z $run ]] || : >"$run/stopped"
}

case ${1:-} in
  start) shift; cmd_start "$@" ;;
  _run) shift; cmd_run "$@" ;;
  follow) shift; cmd_follow "$@" ;;
  status) shift; cmd_status "$@" ;;
  logs) shift; cmd_logs ;;
  stopped) shift; cmd_stopped ;;
  *) die "usage: tpu_worker.sh start|follow|status|logs|stopped (see its header)" ;;
esac
