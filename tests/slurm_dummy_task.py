#!/usr/bin/env python3
"""A task for the fake SLURM tests: a stand-in for the trainer that says
what happens to it, so that a test can wait on events, not on time.

Run by the fake srun (directly, or as `$PYTHON -m alexnet_jax.main ...`
from launch/slurm_gpu.sbatch, whose arguments it ignores), it writes one
line per event to the FIFO $DUMMY_EVENTS (lines are shorter than PIPE_BUF,
so the tasks' lines never mix):
  ready PROCID PID RESTART PPID   when it starts (RESTART:
                             SLURM_RESTART_COUNT; PPID: srun's pid)
  SIGNAME PROCID             for each signal it gets
then, on a restart (SLURM_RESTART_COUNT >= 1), `done PROCID` and exit 0
(training finished); otherwise it waits for signals:
  SIGTERM  exit 143, as the trainer after saving (DUMMY_IGNORE_TERM=1: it
           stays, so only a SIGKILL ends it)
  SIGUSR2  exit $DUMMY_USR2_EXIT (default 3): a task that fails
  SIGINT   exit 130
  SIGUSR1  noted only
"""

import os
import signal
import sys

PROCID = os.environ.get('SLURM_PROCID', '0')


def say(line):
  fd = os.open(os.environ['DUMMY_EVENTS'], os.O_WRONLY)
  try:
    os.write(fd, (line + '\n').encode())
  finally:
    os.close(fd)


def on_signal(sig, _):
  name = signal.Signals(sig).name
  say(f'{name} {PROCID}')
  if sig == signal.SIGTERM and os.environ.get('DUMMY_IGNORE_TERM') != '1':
    sys.exit(143)
  if sig == signal.SIGUSR2:
    sys.exit(int(os.environ.get('DUMMY_USR2_EXIT', '3')))
  if sig == signal.SIGINT:
    sys.exit(130)


def main():
  # Not SIGCONT: it comes with SIGTERM, and Python runs the lower-numbered
  # handler first, so whether SIGCONT is seen before the exit is chance.
  for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2, signal.SIGINT):
    signal.signal(sig, on_signal)
  restart = int(os.environ.get('SLURM_RESTART_COUNT', '0'))
  say(f'ready {PROCID} {os.getpid()} {restart} {os.getppid()}')
  if restart:
    say(f'done {PROCID}')
    return
  while True:
    signal.pause()


if __name__ == '__main__':
  main()
