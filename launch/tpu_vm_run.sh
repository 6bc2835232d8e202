# The worker side of launch/tpu_vm.sh, which sources this file after
# launch/tpu_vm_cloud.sh: copying, installing, starting and following
# training on the workers (through launch/tpu_worker.sh there), and the run:
# bring it up, then follow, reconnect and restart it; --logs and --stop.
# shellcheck shell=bash

# --- The workers -----------------------------------------------------------------

# One tarball instead of scp --recurse: no .git/venvs, and one file per worker.
tarball=$tmp/alexnet_jax.tar.gz
make_tarball() {
  run tar -czf "$tarball" --exclude=.git --exclude=.venv --exclude=venv \
    --exclude=workdirs --exclude=__pycache__ --exclude=.pytest_cache -C "$repo" .
}

# Training processes a previous launcher left on the workers (one that ran
# training in the foreground of its ssh) hold the TPU. SIGTERM makes them
# save a checkpoint and exit; SIGKILL after the grace period. The pattern is
# the venv's python running alexnet_jax.main, at the start of the command
# line: not tpu_worker.sh's wrapper, whose arguments hold the trainer's
# command (it must outlive the trainer to record its exit status and copy
# the last of its log), nor the shell that runs this command.
stop_cmd="pat=\"^\$HOME/alexnet_jax_venv/bin/python -m alexnet_jax[.]main\"; \
me=\$(id -u); \
pids=\$(pgrep -u \"\$me\" -f \"\$pat\") || exit 0; \
echo \"\$(hostname): stopping training processes\" \$pids >&2; \
kill -TERM \$pids 2>/dev/null; \
i=0; \
while [ \$i -lt $stop_grace ] && pgrep -u \"\$me\" -f \"\$pat\" >/dev/null; do sleep 1; i=\$((i + 1)); done; \
pkill -KILL -u \"\$me\" -f \"\$pat\"; \
while pgrep -u \"\$me\" -f \"\$pat\" >/dev/null; do sleep 1; done; \
exit 0"

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

# The trainer's command line on a worker (~ expands there).
train_words="~/alexnet_jax_venv/bin/python -m alexnet_jax.main"
for arg in --config="$config" ${workdir:+--workdir="$workdir"} \
    ${tfds_data_dir:+--config.tfds_data_dir="$tfds_data_dir"} \
    ${data_dir:+--config.data_dir="$data_dir"} ${main_args[@]+"${main_args[@]}"}; do
  train_words+=" $(printf '%q' "$arg")"
done
worker_script='~/alexnet_jax/launch/tpu_worker.sh'
has_script="[ -f $worker_script ] || exit 4"

# Copy, stop leftovers, install: leftovers stop before the install replaces
# the code and venv they are still running from.
prepare() {
  run gcloud compute tpus tpu-vm scp "$tarball" "$name:alexnet_jax.tar.gz" \
    "${gcloud_flags[@]}" --worker=all || return 1
  ssh_to all "$stop_cmd" || return 1
  ssh_to all "$setup"
}

# Worker 0's training: 0 this command runs, 3 another one runs, 4 none.
training_status() {
  ((!dry_run)) || { show gcloud compute tpus tpu-vm ssh "$name" "${gcloud_flags[@]}" \
    --worker=0 --command="$has_script; cd ~/alexnet_jax && bash launch/tpu_worker.sh status -- $train_words"; return 4; }
  ssh_to 0 "$has_script; cd ~/alexnet_jax && bash launch/tpu_worker.sh status -- $train_words"
}

start_training() {
  ssh_to all "cd ~/alexnet_jax && bash launch/tpu_worker.sh start \
--copy-log-to=$(printf '%q' "$workdir/logs/") --copy-every=$log_copy_seconds -- $train_words"
}

another_run() {
  die "TPU VM $name is training another command (its workers said which, above); stop it with --stop, or pick another --name"
}

# --- The run ---------------------------------------------------------------------

fresh_start=0  # the next follow shows the whole log: training just started

# Until this command's training runs on every worker of a READY VM: gets the
# VM (back), then follows the training already there, or prepares the
# workers and starts it. Failures worth retrying are retried with back-off.
bring_up() {
  local status why
  make_tarball
  while :; do
    create_failure=
    if ! acquire; then
      backoff "${create_failure:-getting TPU VM $name failed}"
      continue
    fi
    status=0
    training_status || status=$?
    ((status != 3)) || another_run
    if ((status == 0)); then
      decide "this command is already training on TPU VM $name: following it, not starting another"
      end_outage
      return 0
    fi
    if ((status == 4)); then
      decide "starting training on every worker of TPU VM $name; it resumes from the checkpoints in $workdir, if any"
      status=0
      prepare && start_training || status=$?
      ((status != 3)) || another_run
      if ((status == 0)); then
        end_outage
        fresh_start=1
        return 0
      fi
      why="preparing or starting training on TPU VM $name failed (exit status $status)"
    else
      why="asking worker 0 of TPU VM $name what it runs failed (exit status $status)"
    fi
    backoff "$why"
  done
}

why_ended() {
  case $1 in
    4) printf 'is not running on worker 0' ;;
    75) printf 'stopped because one of its processes was lost (exit status 75)' ;;
    *) printf 'got a signal nobody here sent (exit status %s)' "$1" ;;
  esac
}

# Follows worker 0's log until training ends, then acts on how it ended:
# finished, stopped, a usage error (exit); a lost connection (reconnect);
# a lost process or an unasked signal on a READY VM, or a VM that is not
# READY (restart, in launch mode); anything else (exit with its status).
supervise() {  # supervise launch|attach
  local how=$1 rc t0 lines
  while :; do
    lines=20
    ((!fresh_start)) || lines=100000
    fresh_start=0
    t0=$(now) rc=0
    ssh_to 0 "$has_script; bash $worker_script follow --lines=$lines" || rc=$?
    ((!dry_run)) || exit 0
    (($(now) - t0 < 60)) || end_outage  # It held a while: a new outage.
    case $rc in
      0) decide "training on TPU VM $name finished (exit status 0)"; exit 0 ;;
      2) decide "training exited with status 2 (a usage error in its arguments); not restarting"; exit 2 ;;
      200) decide "training on TPU VM $name was stopped with --stop; it saved a checkpoint, and the same command resumes"; exit 143 ;;
    esac
    describe_node
    if [[ $node_state == READY && $rc == 255 ]]; then
      backoff "lost the connection to worker 0 of TPU VM $name (ssh exit status 255); training goes on there"
      continue
    fi
    if [[ $how == attach ]]; then
      ((rc != 4)) || fail "no training has run on worker 0 of TPU VM $name"
      decide "training on TPU VM $name ended with exit status $rc (the VM is ${node_state:-gone}); --attach restarts nothing"
      exit "$rc"
    fi
    if [[ $node_state == READY ]]; then
      case $rc in
        4|75|130|143)
          use_restart "training on TPU VM $name (READY) $(why_ended "$rc"); starting it again, it resumes from $workdir" || exit "$rc" ;;
        *)
          decide "training on TPU VM $name failed with exit status $rc; not restarting (its log: --logs)"
          exit "$rc" ;;
      esac
    else
      use_restart "TPU VM $name is ${node_state:-gone} (training exit status $rc): getting it back and starting training again, which resumes from $workdir" || exit "$rc"
    fi
    bring_up
  done
}

show_logs() {
  local rc=0 listing latest
  describe_node
  if ((dry_run)) || [[ $node_state == READY ]]; then
    ssh_to 0 "$has_script; bash $worker_script logs" || rc=$?
    ((dry_run || rc == 255)) || exit "$rc"
    ((!dry_run)) || [[ -n $workdir ]] || return 0
  fi
  [[ -n $workdir ]] ||
    fail "TPU VM $name is ${node_state:-not there}; worker 0's log is copied to the workdir: give --workdir to read it"
  query listing gcloud storage ls "$workdir/logs/"
  latest=$(grep -E '/[0-9]{8}T[0-9]{6}Z-[0-9]+\.log$' <<<"$listing" | sort | tail -n 1 || true)
  ((!dry_run)) || latest=$workdir/logs/RUN.log
  [[ -n $latest ]] || fail "no copy of a log in $workdir/logs/ yet"
  run gcloud storage cat "$latest"
}

stop_training() {
  require_ready "there is no training to stop"
  decide "stopping training on every worker of TPU VM $name: SIGTERM, so that it saves a checkpoint (SIGKILL after ${stop_grace}s)"
  ssh_to all "[ -f $worker_script ] && bash $worker_script stopped; $stop_cmd"
  decide "training on TPU VM $name stopped; the VM is left running (gcloud compute tpus tpu-vm delete $name --zone=$zone deletes it)"
}
