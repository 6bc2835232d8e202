"""The fake SLURM commands (tests/fake_slurm) are as strict as Slurm 25.05's:
they refuse what the real ones refuse, with the real wording and exit
status, accept what the real ones accept (getopt_long's abbreviations
included), and do what the real ones do with the options the project
relies on: srun's --kill-on-bad-exit and signal handling, scancel's
--signal/--batch/--full, scontrol requeue, sbatch's --signal and the
site-dependent --exclusive. Real processes throughout (the dummy task,
tests/slurm_dummy_task.py, reports what happens to it through a FIFO), no
trainer.
"""

import json
import os
import shutil
import signal
import subprocess
import sys

import pytest

from tests.slurm_cluster import DUMMY_TASK, FAKE_SLURM, Events, batch_script
from tests.slurm_cluster import calls, cluster_env, proc_state, sbatch
from tests.slurm_cluster import stop_jobs  # pylint: disable=unused-import
from tests.slurm_cluster import wait_for_text, wait_until

LIB = FAKE_SLURM / 'lib'


def run(env, command, *args):
  """A fake command run to its end: (status, stdout, stderr lines)."""
  result = subprocess.run([sys.executable, str(FAKE_SLURM / command), *args],
                          env=env, capture_output=True, text=True, timeout=60)
  return result.returncode, result.stdout, result.stderr.splitlines()


@pytest.fixture
def env(tmp_path):
  return cluster_env(tmp_path)


# --- Refused as the real commands refuse --------------------------------------

TRY = 'Try "{} --help" for more information'
REFUSED = [
    ('sbatch', ['--bogus', 'job.sh'],
     ["sbatch: unrecognized option '--bogus'"], 255),
    ('sbatch', ['--gpus-per-nodes=8', 'job.sh'],  # Misspelled: no prefix.
     ["sbatch: unrecognized option '--gpus-per-nodes=8'"], 255),
    ('sbatch', ['--gpus-per=8', 'job.sh'],
     ["sbatch: option '--gpus-per=8' is ambiguous; possibilities: "
      "'--gpus-per-node' '--gpus-per-socket' '--gpus-per-task'"], 255),
    ('sbatch', ['--requeue=yes', 'job.sh'],
     ["sbatch: option '--requeue' doesn't allow an argument"], 255),
    ('sbatch', ['-N'], ["sbatch: option requires an argument -- 'N'"], 255),
    ('sbatch', ['--signal=B:USR1@soon', 'job.sh'],
     ['sbatch: error: Invalid --signal specification'], 255),
    ('sbatch', ['--signal=B:FOO@300', 'job.sh'],
     ['sbatch: error: Invalid --signal specification'], 255),
    ('sbatch', ['--time=soon', 'job.sh'],
     ['sbatch: error: Invalid --time specification'], 255),
    ('sbatch', ['--nodes=two', 'job.sh'],
     ['sbatch: error: "two" is not a valid node count'], 255),
    ('sbatch', ['--ntasks=0', 'job.sh'],
     ['sbatch: error: Invalid numeric value "0" for --ntasks.'], 1),
    ('sbatch', ['--cpus-per-task=x', 'job.sh'],
     ['sbatch: error: Invalid numeric value "x" for --cpus-per-task.'], 1),
    ('sbatch', ['--exclusive=all', 'job.sh'],
     ['sbatch: error: Invalid --exclusive specification'], 255),
    ('srun', ['--bogus', 'true'], ["srun: unrecognized option '--bogus'"], 255),
    ('srun', ['--gpus-per-nodes=8', 'true'],
     ["srun: unrecognized option '--gpus-per-nodes=8'"], 255),
    ('srun', ['--kill-on-bad-exit=yes', 'true'],
     ['srun: error: Invalid numeric value "yes" for --kill-on-bad-exit.'], 1),
    ('srun', ['--gpu-bind=all', 'true'],
     ['srun: error: Invalid --gpu-bind argument: all'], 255),
    ('srun', ['--ntasks=-2', 'true'],
     ['srun: error: Invalid numeric value "-2" for --ntasks.'], 1),
    ('srun', ['--nodes=1'], ['srun: fatal: No command given to execute.'], 1),
    ('scancel', ['--bogus', '4242'], ["scancel: unrecognized option '--bogus'"],
     1),
    ('scancel', ['--sig=TERM', '4242', '--sigg'],
     ["scancel: unrecognized option '--sigg'"], 1),
    ('scancel', ['--signal=FOO', '4242'], ['Unknown job signal: FOO'], 1),
    ('scancel', [], ['scancel: error: No job identification provided'], 1),
    ('scancel', ['42x'], ['scancel: error: Invalid job id 42x'], 1),
    ('scancel', ['4242'], ['scancel: error: Kill job error on job id 4242: '
                           'Invalid job id specified'], 1),
    ('scontrol', ['--bogus', 'requeue', '4242'],
     ["scontrol: unrecognized option '--bogus'"], 1),
    ('scontrol', ['requeue', '4242'],
     ['Invalid job id specified for job 4242'], 1),
    ('scontrol', ['requeue'], ['too few arguments for keyword:requeue'], 1),
    ('scontrol', ['bogus'], ['invalid keyword: bogus'], 1),
]


@pytest.mark.parametrize('command, args, lines, status', REFUSED,
                         ids=[f'{c} {" ".join(a)}' for c, a, _, _ in REFUSED])
def test_refused_with_the_real_wording_and_status(env, command, args, lines,
                                                  status):
  """getopt_long's messages and Slurm's Try line and exit status
  (tests/fake_slurm/lib/getopt_long.py), and each command's own checks
  (lib/shapes.py; scancel's and scontrol's sources)."""
  env['SLURM_JOB_ID'] = '4242'  # srun's checks come before the step's.
  got, _, stderr = run(env, command, *args)
  if stderr and stderr[-1].startswith('Try '):
    lines = lines + [TRY.format(command)]
  assert (got, stderr) == (status, lines)


def test_an_abbreviation_is_what_getopt_long_makes_it(env, tmp_path):
  """`--gpus-per-nod=4 --job-n=x` ARE --gpus-per-node=4 --job-name=x to
  the real sbatch (unique prefixes), so the fake takes them too."""
  script = batch_script(tmp_path / 'job.sh',
                        'echo "$SLURM_GPUS_PER_NODE $SLURM_JOB_NAME"\n')
  status, out, err = run(env, 'sbatch', '--gpus-per-nod=4', '--job-n=x',
                         script)
  assert status == 0, err
  assert out.splitlines() == ['Submitted batch job 4242', '4 x']


@pytest.mark.parametrize('line, message', [
    ('#SBATCH --gpus-per-nodes=8',
     "sbatch: unrecognized option '--gpus-per-nodes=8'"),
    ('#SBATCH --signal=B:USR1@soon',
     'sbatch: error: Invalid --signal specification'),
    ('#SBATCH nodes=2',
     'sbatch: error: Invalid directive found in batch script: nodes=2'),
])
def test_a_bad_directive_is_refused(env, tmp_path, line, message):
  script = batch_script(tmp_path / 'job.sh', f'{line}\necho ran\n')
  status, out, err = run(env, 'sbatch', script)
  assert status == 255 and 'ran' not in out
  assert err[0] == message


def test_a_script_without_an_interpreter_is_refused(env, tmp_path):
  (tmp_path / 'job.sh').write_text('echo ran\n')
  status, _, err = run(env, 'sbatch', str(tmp_path / 'job.sh'))
  assert status == 1
  assert err == ['sbatch: error: This does not look like a batch script.  '
                 'The first', 'sbatch: error: line must start with #! '
                 'followed by the path to an interpreter.',
                 'sbatch: error: For instance: #!/bin/sh']


def test_documented_options_that_the_fake_does_not_model_are_refused(env):
  status, _, err = run(env, 'sbatch', '--array=1-3', 'job.sh')
  assert status == 1
  assert err == ['fake sbatch: --array is documented but not modelled by '
                 'this fake']


# --- getopt_long's wording is glibc's -----------------------------------------

GETOPT_CASES = [
    ['--bogus'], ['--bogus=1'], ['--gpus-per=8'], ['--gpu=1'], ['--nodes'],
    ['-N'], ['--requeue=1'], ['-Z'], ['--no=3'], ['--ntasks-per-n=4', 'x'],
    ['--gpus-per-nod=8', 'x'], ['--exclusive', 'user'], ['-K', '1', 'x'],
    ['--kill=1', 'x'], ['--over', 'x'], ['--sig=TERM', '1'], ['--n=x', '1'],
    ['--na=x', '1'], ['--s', 'requeue'], ['--js=yaml', 'show'], ['-u'],
]


def glibc_program(table, tmp_path):
  """A C program that runs glibc's getopt_long over TABLE's options and
  prints its verdict (named as the command, as getopt prints argv[0])."""
  kinds = {'no': 'no_argument', 'required': 'required_argument',
           'optional': 'optional_argument'}
  rows, optstring, seen = [], '+' if table['stop'] else '', set()
  for i, (name, short, kind) in enumerate(table['rows']):
    if short and short not in seen:
      seen.add(short)
      optstring += short + {'no': '', 'required': ':', 'optional': '::'}[kind]
    val = f"'{short}'" if short else str(1000 + i)
    rows.append(f'{{"{name}", {kinds[kind]}, 0, {val}}}')
  source = ('#include <getopt.h>\n#include <stdio.h>\n'
            'static struct option lo[] = {'
            f'{", ".join(rows)}, {{0, 0, 0, 0}}}};'
            '\nint main(int argc, char **argv) {\n  int c, i;\n'
            f'  while ((c = getopt_long(argc, argv, "{optstring}", lo, &i))'
            ' != -1)\n    if (c == \'?\') return 1;\n  return 0;\n}\n')
  (tmp_path / f'{table["prog"]}.c').write_text(source)
  program = tmp_path / 'bin' / table['prog']
  program.parent.mkdir(exist_ok=True)
  subprocess.run([shutil.which('cc'), '-o', str(program),
                  str(tmp_path / f'{table["prog"]}.c')], check=True)
  return program


@pytest.mark.skipif(not shutil.which('cc'), reason='no C compiler here')
def test_getopt_messages_are_glibcs(env, tmp_path):
  """Every command's option table, compiled into glibc's own getopt_long:
  the same options are errors, with the same line, as in the fakes."""
  dump = ('import json, sys; sys.path.insert(0, sys.argv[1]); '
          'import documented as d; print(json.dumps([{"prog": t.prog, '
          '"stop": t.stop_at_operand, "rows": [list(o) for o in t.options]} '
          'for t in (d.SBATCH, d.SRUN, d.SCANCEL, d.SCONTROL)]))')
  tables = json.loads(subprocess.run(
      [sys.executable, '-c', dump, str(LIB)], capture_output=True, text=True,
      check=True).stdout)
  env['SLURM_JOB_ID'] = '4242'
  env['FAKE_SRUN_RECORD_ONLY'] = '1'
  getopt_words = ('unrecognized option', 'is ambiguous', 'requires an',
                  "doesn't allow", 'invalid option')
  for table in tables:
    program = glibc_program(table, tmp_path)
    for args in GETOPT_CASES:
      real = subprocess.run([table['prog'], *args], capture_output=True,
                            text=True, env={'PATH': str(program.parent)})
      _, _, err = run(env, table['prog'], *args)
      ours = [l for l in err if any(w in l for w in getopt_words)]
      assert ours == real.stderr.splitlines(), (table['prog'], args)


# --- The allocation -----------------------------------------------------------


@pytest.mark.parametrize('site, args, gpus', [
    (0, ['--exclusive'], ''), (1, ['--exclusive'], '8'),
    (0, ['--exclusive', '--gpus-per-node=4'], '4'),
    (1, ['--exclusive', '--gpus-per-node=4'], '8'), (1, [], ''),
    (0, ['--gres=gpu:2'], '2'),
], ids=['exclusive-no-gres-site', 'exclusive-gres-site', 'asked-no-gres-site',
        'asked-gres-site', 'shared', 'gres'])
def test_exclusive_brings_gpus_only_where_the_site_says(tmp_path, site, args,
                                                        gpus):
  """sbatch(1): an --exclusive job "is allocated all CPUs and GRES"; sites
  differ (the partition's OverSubscribe wins over the job's --exclusive):
  FAKE_SLURM_EXCLUSIVE_GRES picks."""
  env = cluster_env(tmp_path, exclusive_gres=site)
  script = batch_script(tmp_path / 'job.sh', 'echo "[$SLURM_GPUS_ON_NODE]"\n')
  status, out, err = run(env, 'sbatch', *args, script)
  assert status == 0, err
  assert out.splitlines()[-1] == f'[{gpus}]'


@pytest.mark.parametrize('args', [['--gpus-per-node=v100:2'],
                                  ['--gpus-per-node=x'], ['--gres=fpga:1']])
def test_gres_the_site_has_not_is_refused_at_submission(env, tmp_path, args):
  script = batch_script(tmp_path / 'job.sh', 'echo ran\n')
  status, out, err = run(env, 'sbatch', *args, script)
  assert (status, 'ran' in out) == (1, False)
  assert err == ['sbatch: error: Batch job submission failed: Invalid generic '
                 'resource (gres) specification']


@pytest.mark.parametrize('job, step, message', [
    ([], ['--gpus-per-node=1'], 'Unable to create step for job 4242: Invalid '
     'generic resource (gres) specification'),
    (['--gpus-per-node=2'], ['--gpus-per-node=4'], 'Unable to create step for '
     'job 4242: Invalid generic resource (gres) specification'),
    (['--nodes=1'], ['--nodes=2'], 'Only allocated 1 nodes asked for 2'),
])
def test_a_step_larger_than_its_job_is_refused(env, tmp_path, job, step,
                                               message):
  env['FAKE_SRUN_RECORD_ONLY'] = '1'
  script = batch_script(tmp_path / 'job.sh',
                        f'srun {" ".join(step)} true\necho "srun $?"\n')
  status, out, err = run(env, 'sbatch', *job, script)
  assert status == 0 and out.splitlines()[-1] == 'srun 1'
  assert err == [f'srun: error: {message}']


# --- srun: a task that fails, and srun's signals ------------------------------


def start_step(tmp_path, env, srun_args, ntasks=3):
  """A job whose step runs NTASKS dummy tasks: (sbatch, events, {procid:
  pid}, srun's pid), once every task is up."""
  script = batch_script(tmp_path / 'job.sh', (
      f'srun {srun_args} --ntasks={ntasks} {DUMMY_TASK}\n'
      'echo "srun exit $?"\n'))
  events = Events(tmp_path)
  err = open(tmp_path / 'err', 'w')
  proc = sbatch(env, script, stderr=err)
  ready = [events.next(proc).split() for _ in range(ntasks)]
  assert all(r[0] == 'ready' for r in ready), ready
  pids = {int(r[1]): int(r[2]) for r in ready}
  return proc, events, pids, int(ready[0][4])


def finish(proc):
  out, _ = proc.communicate(timeout=60)
  return proc.returncode, out.splitlines()


@pytest.mark.parametrize('kill', ['--kill-on-bad-exit=1', '-K', '-K1'])
def test_kill_on_bad_exit_ends_the_other_tasks(env, tmp_path, kill):
  """Task 1 exits 3: srun ends the step (SIGCONT, SIGTERM to the others),
  which exit 143; srun returns the highest exit code, 143."""
  proc, events, pids, _ = start_step(tmp_path, env, kill)
  os.kill(pids[1], signal.SIGUSR2)
  assert events.take(3, proc) == ['SIGTERM 0', 'SIGTERM 2', 'SIGUSR2 1']
  status, out = finish(proc)
  assert status == 0 and out[-1] == 'srun exit 143'
  err = (tmp_path / 'err').read_text()
  assert 'srun: error: localhost: task 1: Exited with exit code 3' in err
  assert ('slurmstepd: error: *** STEP 4242.0 ON localhost CANCELLED AT '
          in err and 'DUE TO TASK FAILURE ***' in err)


def test_without_kill_on_bad_exit_the_others_run_on(env, tmp_path):
  """--kill-on-bad-exit=0 (and KillOnBadExit=0): once srun has reported
  task 1's exit, the others are untouched until scancel signals them."""
  proc, events, pids, _ = start_step(tmp_path, env, '--kill-on-bad-exit=0')
  os.kill(pids[1], signal.SIGUSR2)
  assert events.next(proc) == 'SIGUSR2 1'
  wait_for_text(tmp_path / 'err', 'task 1: Exited with exit code 3', proc)
  subprocess.run(['scancel', '--signal=USR1', '4242'], env=env, check=True)
  assert events.take(2, proc) == ['SIGUSR1 0', 'SIGUSR1 2']
  subprocess.run(['scancel', '--signal=TERM', '4242'], env=env, check=True)
  assert events.take(2, proc) == ['SIGTERM 0', 'SIGTERM 2']
  assert finish(proc) == (0, ['Submitted batch job 4242', 'srun exit 143'])


def test_a_task_that_outlives_killwait_is_killed(tmp_path):
  """Tasks that ignore SIGTERM get SIGKILL KillWait seconds later; a task
  killed by a signal makes srun return 128 + that signal, above any exit
  code."""
  env = cluster_env(tmp_path, kill_wait=1)
  env['DUMMY_IGNORE_TERM'] = '1'
  proc, events, pids, _ = start_step(tmp_path, env, '--kill-on-bad-exit=1')
  os.kill(pids[1], signal.SIGUSR2)
  assert events.take(3, proc) == ['SIGTERM 0', 'SIGTERM 2', 'SIGUSR2 1']
  assert finish(proc)[1][-1] == 'srun exit 137'
  err = (tmp_path / 'err').read_text()
  assert 'srun: error: localhost: task 0: Killed' in err


def test_srun_passes_usr1_on_but_not_sigterm(tmp_path):
  """srun forwards SIGUSR1; on SIGTERM it does not signal the tasks (slurmd
  does that on a real cluster): it aborts the step and SIGKILLs the tasks
  KillWait + 2 seconds later."""
  env = cluster_env(tmp_path, kill_wait=0)
  proc, events, _, srun = start_step(tmp_path, env, '', ntasks=2)
  os.kill(srun, signal.SIGUSR1)
  assert events.take(2, proc) == ['SIGUSR1 0', 'SIGUSR1 1']
  os.kill(srun, signal.SIGTERM)
  status, out = finish(proc)
  assert (status, out[-1]) == (0, 'srun exit 137')
  err = (tmp_path / 'err').read_text()
  assert ('srun: forcing job termination\nsrun: Job step aborted: Waiting up '
          'to 2 seconds for job step to finish.\n') in err
  assert not [e for e in events.drain() if e.startswith('SIGTERM')]


def test_two_interrupts_within_a_second_reach_the_tasks(env, tmp_path):
  """Ctrl-C once: srun prints the step's state; twice within a second:
  SIGINT to every task. (Each SIGINT is sent once srun has answered the
  one before, so the kernel cannot merge two; if answering took srun over
  a second, the next SIGINT is a first one again.)"""
  proc, events, _, srun = start_step(tmp_path, env, '', ntasks=2)
  err, sent = tmp_path / 'err', 0
  answered = lambda: sum(err.read_text().count(t) for t in (
      'srun: interrupt (one more within 1 sec to abort)', 'sending Ctrl-C'))
  while 'sending Ctrl-C' not in err.read_text():
    os.kill(srun, signal.SIGINT)
    sent += 1
    # pylint: disable-next=cell-var-from-loop
    wait_until(lambda: answered() >= sent, proc)
  assert events.take(2, proc) == ['SIGINT 0', 'SIGINT 1']
  assert finish(proc)[1][-1] == 'srun exit 130'


# --- scancel ------------------------------------------------------------------

TRAPPING_JOB = (
    'trap \'echo "batch $1" > "$DUMMY_EVENTS"\' USR1\n'
    'srun --ntasks=2 {task} &\n'
    'while true; do wait $! && break; kill -0 $! 2>/dev/null || break; done\n')


def start_trapping_job(tmp_path, env, headers=''):
  """A batch shell that reports the USR1 it gets, running two tasks."""
  body = headers + TRAPPING_JOB.replace('$1', 'USR1').format(task=DUMMY_TASK)
  events = Events(tmp_path)
  proc = sbatch(env, batch_script(tmp_path / 'job.sh', body))
  ready = [events.next(proc).split() for _ in range(2)]
  return proc, events, {int(r[1]): int(r[2]) for r in ready}


def test_scancel_signal_goes_to_the_steps_batch_to_the_shell(env, tmp_path):
  """scancel(1): --signal goes to the steps' tasks, not the batch shell;
  --batch to the shell alone; --full to the shell and its children (srun,
  which passes USR1 on) and the steps."""
  proc, events, _ = start_trapping_job(tmp_path, env)
  scancel = lambda *a: subprocess.run(['scancel', *a, '4242'], env=env,
                                      check=True)
  scancel('--signal=USR1')
  assert events.take(2, proc) == ['SIGUSR1 0', 'SIGUSR1 1']
  scancel('--batch', '--signal=USR1')
  assert events.take(1, proc) == ['batch USR1']
  scancel('-f', '-s', 'USR1')  # Each task gets it from scancel and srun,
  got = events.until({'batch USR1', 'SIGUSR1 0', 'SIGUSR1 1'}, proc)
  assert got.count('batch USR1') == 1  # or once, if the two merge.
  scancel('--signal=TERM')
  got = events.until({'SIGTERM 0', 'SIGTERM 1'}, proc)
  assert set(got) <= {'SIGTERM 0', 'SIGTERM 1', 'SIGUSR1 0', 'SIGUSR1 1'}
  assert proc.wait(timeout=60) == 0


def test_scancel_ends_the_job_with_sigterm_then_sigkill(tmp_path):
  """scancel JOBID: SIGTERM to the tasks and the batch shell, SIGKILL to
  what is left KillWait seconds later (here all of it: the tasks and the
  shell ignore SIGTERM)."""
  env = cluster_env(tmp_path, kill_wait=1)
  env['DUMMY_IGNORE_TERM'] = '1'
  headers = 'trap \'echo "batch TERM" > "$DUMMY_EVENTS"\' TERM\n'
  proc, events, pids = start_trapping_job(tmp_path, env, headers)
  subprocess.run(['scancel', '4242'], env=env, check=True)
  assert events.take(3, proc) == ['SIGTERM 0', 'SIGTERM 1', 'batch TERM']
  _, err = proc.communicate(timeout=60)
  assert proc.returncode == 137  # The batch shell's SIGKILL.
  assert '*** JOB 4242 ON localhost CANCELLED AT' in err
  assert {proc_state(pid) for pid in pids.values()} <= {'gone', 'zombie'}
  assert calls(tmp_path)[-1] == 'job 4242: ended, exit status 137'


# --- scontrol requeue, sbatch --signal ----------------------------------------


@pytest.mark.parametrize('option, runs, message', [
    ('--requeue', ['run 0', 'run 1'], ''),
    ('--no-requeue', ['run 0'],
     'Requested operation is presently disabled for job 4242'),
])
def test_requeue_runs_the_job_again(env, tmp_path, option, runs, message):
  """scontrol requeue JOBID ends the running job and runs it again, same
  id, SLURM_RESTART_COUNT=1; not a --no-requeue job."""
  script = batch_script(tmp_path / 'job.sh', (
      'echo "run ${SLURM_RESTART_COUNT:-0}"\n'
      '[[ -n ${SLURM_RESTART_COUNT:-} ]] && exit 0\n'
      'scontrol requeue "$SLURM_JOB_ID" || exit 0\n'
      'exec sleep infinity  # Until the requeue ends this run.\n'))
  status, out, err = run(env, 'sbatch', option, script)
  assert status == 0
  assert out.splitlines()[1:] == runs
  assert (message in err) if message else not [l for l in err
                                                if 'scontrol' in l]


@pytest.mark.parametrize('spec, to', [('B:USR1@300', ['batch USR1']),
                                      ('USR1@300', ['SIGUSR1 0', 'SIGUSR1 1'])])
def test_sbatch_signal_goes_where_it_says(env, tmp_path, spec, to):
  """The job's --signal, sent when the clock reaches its time (SIGALRM to
  the fake sbatch): with B: to the batch shell only, else to the tasks."""
  proc, events, _ = start_trapping_job(tmp_path, env,
                                       f'#SBATCH --signal={spec}\n')
  proc.send_signal(signal.SIGALRM)
  assert events.take(len(to), proc) == to
  subprocess.run(['scancel', '--signal=TERM', '4242'], env=env, check=True)
  assert events.take(2, proc) == ['SIGTERM 0', 'SIGTERM 1']
  assert proc.wait(timeout=60) == 0
