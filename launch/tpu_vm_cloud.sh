# The cloud side of launch/tpu_vm.sh, which sources this file after parsing
# its options (it is not a command of its own): how commands run, time and
# decisions (each one a line here and in the workdir), back-off and the
# restart budget, and the VM (describe, create through stockouts, delete,
# queued resources). The workers and the run: launch/tpu_vm_run.sh.
# shellcheck shell=bash

# --- Commands ------------------------------------------------------------------

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

# run_keeping_error VAR COMMAND...: run, its stderr shown and kept in VAR.
run_keeping_error() {
  local error_var=$1 status=0
  shift
  show "$@"
  ((dry_run)) && return 0
  "$@" 2> >(tee "$tmp/stderr" >&2) || status=$?
  wait  # for tee
  printf -v "$error_var" '%s' "$(cat "$tmp/stderr" 2>/dev/null)"
  return "$status"
}

gcloud_flags=(--zone="$zone")
if [[ -n $project ]]; then gcloud_flags+=(--project="$project"); fi
tier_flags=()
if ((spot)); then tier_flags+=(--spot); fi
if ((reserved)); then tier_flags+=(--reserved); fi
qr=$name  # the queued resource, when --queued, is named like the VM

ssh_to() {  # ssh_to WORKER COMMAND
  run gcloud compute tpus tpu-vm ssh "$name" "${gcloud_flags[@]}" \
    --worker="$1" --command="$2"
}

# --- Time, decisions, back-off, restarts -----------------------------------------

now() { date +%s; }
stamp() { date -u -d "@$1" +%Y-%m-%dT%H:%M:%SZ; }
pause() { ((dry_run)) || sleep "$1"; }

decisions=$tmp/launcher.log
decisions_url=${workdir:+$workdir/logs/launcher.log}

# The workdir's decision log so far, so that each upload carries it all.
init_decisions() {
  local earlier
  [[ -n $decisions_url ]] || return 0
  query earlier gcloud storage cat "$decisions_url"
  [[ -z $earlier ]] || printf '%s\n' "$earlier" >"$decisions"
}

record() {
  printf '%s %s\n' "$(stamp "$(now)")" "$*" >>"$decisions"
  [[ -n $decisions_url ]] || return 0
  # Shown in a dry run; in a real one the decision's own line stands for it.
  if ((dry_run)); then
    show gcloud storage cp --quiet "$decisions" "$decisions_url"
  elif ! gcloud storage cp --quiet "$decisions" "$decisions_url" >/dev/null 2>&1; then
    note "could not copy this decision to $decisions_url (the next one carries it)"
  fi
}

# One decision: a line here and a line in the workdir.
decide() {
  note "$*"
  record "$*"
}

# A failure that is not the user's input (a queued resource that FAILED, a
# deadline passed): one error line, recorded too.
fail() {
  printf 'error: %s\n' "$*" >&2
  record "error: $*"
  exit 1
}

# Ctrl-C or SIGTERM here: training, if running, goes on on the workers.
detach() {
  trap - INT TERM
  decide "detached ($([[ $1 == 130 ]] && echo Ctrl-C || echo SIGTERM)): training, if it was running, goes on on TPU VM $name; follow it with --attach, stop it with --stop"
  exit "$1"
}

# An outage: from the first failure to get the VM back or reach it, until it
# works again. Within one, tries are spaced by a doubling back-off and end
# at the deadline (--retry-for after the outage began).
outage_start=
attempt=0

end_outage() {
  outage_start= attempt=0
}

backoff() {  # backoff WHAT: waits before the next try, or gives up
  local t wait deadline
  t=$(now)
  [[ -n $outage_start ]] || outage_start=$t
  deadline=$((outage_start + retry_for))
  ((t < deadline)) ||
    fail "$1; giving up: still failing $((t - outage_start)) s after it began, at $(stamp "$t") (--retry-for=$retry_for_text)"
  attempt=$((attempt + 1))
  wait=$((retry_base * (1 << (attempt < 6 ? attempt - 1 : 5))))
  ((wait <= deadline - t)) || wait=$((deadline - t))
  decide "$1: trying again in ${wait}s (attempt $attempt; giving up at $(stamp "$deadline"))"
  pause "$wait"
}

restarts=()  # when each restart within the window happened

use_restart() {  # use_restart WHY: a restart from the budget, or give up
  local t kept=() r
  t=$(now)
  for r in ${restarts[@]+"${restarts[@]}"}; do
    ((t - r < restart_window)) && kept+=("$r")
  done
  restarts=(${kept[@]+"${kept[@]}"})
  if ((${#restarts[@]} >= max_restarts)); then
    decide "$1; no restarts left (${#restarts[@]} in the last $restart_window_text: --max-restarts=$max_restarts --restart-window=$restart_window_text)"
    return 1
  fi
  restarts+=("$t")
  decide "restart ${#restarts[@]}/$max_restarts (in the last $restart_window_text): $1"
}

# --- The VM ----------------------------------------------------------------------

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

# Capacity (a stockout, RESOURCE_EXHAUSTED) or a service that is briefly
# unavailable: worth waiting for. Anything else (a bad runtime version, no
# permission, no quota at all) is not.
transient() {
  [[ $1 =~ (RESOURCE_EXHAUSTED|UNAVAILABLE|[Ss]tockout|[Nn]o\ more\ capacity|[Ii]nsufficient\ capacity|capacity\ is\ not\ available|\"code\":\ ?(8|14)[^0-9]|[Tt]ry\ again\ later) ]]
}

create_node() {
  local error first
  decide "TPU VM $name does not exist: creating it ($accelerator_type, $version${tier_flags[*]:+, ${tier_flags[*]}})"
  run_keeping_error error gcloud compute tpus tpu-vm create "$name" \
    "${gcloud_flags[@]}" --accelerator-type="$accelerator_type" \
    --version="$version" ${tier_flags[@]+"${tier_flags[@]}"} && return 0
  first=$(grep -m1 -i 'error' <<<"$error" || true)
  first=${first:-$error}
  transient "$error" || fail "could not create TPU VM $name: ${first:0:300}"
  create_failure="TPU VM $name could not be created, for lack of capacity or availability (${first:0:200})"
  return 1
}

create_queued() {
  local extra=()
  if [[ -n $valid_until ]]; then extra+=(--valid-until-duration="$valid_until"); fi
  run gcloud compute tpus queued-resources create "$qr" "${gcloud_flags[@]}" \
    --node-id="$name" --accelerator-type="$accelerator_type" \
    --runtime-version="$version" ${tier_flags[@]+"${tier_flags[@]}"} \
    ${extra[@]+"${extra[@]}"}
}

# Waits, within the outage's deadline: STATE is a passing one.
wait_a_while() {  # wait_a_while WHAT
  local t
  t=$(now)
  [[ -n $outage_start ]] || outage_start=$t
  ((t < outage_start + retry_for)) ||
    fail "$1; giving up at $(stamp "$t") (--retry-for=$retry_for_text)"
  decide "$1: checking again in ${poll_seconds}s"
  pause "$poll_seconds"
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
      *) wait_a_while "queued resource $qr is $state" ;;
    esac
  done
}

# A READY VM of the requested type called $name, or 1 (create_failure says
# why) when a try failed in a way worth trying again.
acquire() {
  local qstate
  while :; do
    describe_node
    if [[ -z $node_state ]]; then
      if ((!queued)); then
        create_node
        return
      fi
      query qstate gcloud compute tpus queued-resources describe "$qr" \
        "${gcloud_flags[@]}" --format='value(state.state)'
      case $qstate in
        '')
          decide "requesting TPU VM $name as queued resource $qr ($accelerator_type${tier_flags[*]:+, ${tier_flags[*]}})"
          create_queued || return 1 ;;
        FAILED|SUSPENDED)
          decide "queued resource $qr is $qstate; deleting it and requesting again"
          run gcloud compute tpus queued-resources delete "$qr" "${gcloud_flags[@]}" --quiet || return 1
          create_queued || return 1 ;;
        SUSPENDING|DELETING)
          wait_a_while "queued resource $qr is $qstate"
          continue ;;
        *) decide "waiting for the existing queued resource $qr ($qstate)" ;;
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
        decide "using TPU VM $name (READY, $node_type)"
        return 0 ;;
      PREEMPTED|TERMINATED)
        decide "TPU VM $name is $node_state; deleting it to create it again"
        delete_node || { create_failure="deleting TPU VM $name failed"; return 1; } ;;
      STOPPED)
        decide "TPU VM $name is STOPPED; starting it"
        run gcloud compute tpus tpu-vm start "$name" "${gcloud_flags[@]}" ||
          { create_failure="starting TPU VM $name failed"; return 1; } ;;
      *) wait_a_while "TPU VM $name is $node_state" ;;
    esac
  done
}

require_ready() {  # require_ready WHY: the VM must be READY for this mode
  describe_node
  ((dry_run)) || [[ $node_state == READY ]] ||
    fail "TPU VM $name is ${node_state:-not there}; $1"
}

