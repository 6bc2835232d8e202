"""glibc's getopt_long as Slurm's commands call it, for the fake commands.

The real sbatch, srun, scancel and scontrol read their options with glibc's
getopt_long (Slurm 25.05.8, tag slurm-25-05-8-1 of github.com/SchedMD/slurm:
src/common/slurm_opt.c slurm_option_table_create gives sbatch and srun the
optstring "+...", so they stop at the first word that is not an option;
src/scancel/opt.c and src/scontrol/scontrol.c use plain optstrings, so
options and operands may mix). What glibc (posix/getopt.c, 2.26 and later;
this machine's 2.36 prints the same) does, and so what a user sees:

- a long option may be abbreviated to any prefix no other option shares:
  `--gpus-per-nod=8` IS `--gpus-per-node=8` to the real sbatch; an exact name
  wins over the longer names it prefixes; a prefix of options that differ is
  ambiguous;
- a required value follows `=` or is the next word, whatever it looks like;
  an optional one comes only after `=` (or attached to a short option:
  `-K1`, never `-K 1`); a flag refuses `=VALUE`; short flags cluster (`-vQ`);
- `--` ends the options.

The messages (PROG is the command's name, as typed):
  PROG: unrecognized option '--bogus=1'
  PROG: option '--gpus-per=8' is ambiguous; possibilities: '--gpus-per-node' ...
  PROG: option '--nodes' requires an argument
  PROG: option '--requeue' doesn't allow an argument
  PROG: invalid option -- 'Z'
  PROG: option requires an argument -- 'N'
after which Slurm prints its own line, `Try "PROG --help" for more
information`, and exits: 255 from sbatch and srun (the '?' reaches
arg_set__unknown_sbatch/_srun, whose error makes slurm_process_option_or_exit
call exit(-1)), 1 from scancel and scontrol (their `case '?'` calls exit(1)).
"""

import collections
import sys

NO, REQUIRED, OPTIONAL = 'no', 'required', 'optional'

Option = collections.namedtuple('Option', 'name short kind')


class Table:
  """A command's documented options, in the order of its getopt table."""

  def __init__(self, prog, rows, stop_at_operand, exit_status):
    self.prog = prog
    self.options = [Option(*row) for row in rows]
    self.shorts = {}
    for o in self.options:  # An alias's letter means the first name.
      if o.short:
        self.shorts.setdefault(o.short, o)
    self.stop_at_operand = stop_at_operand  # optstring starts with '+'
    self.exit_status = exit_status

  def long_names(self):
    return {o.name for o in self.options}


class UsageError(Exception):
  """getopt's complaint; the command adds its Try line and exit status."""


def refuse(table, message):
  """What the real command prints and exits with on a getopt error."""
  print(f'{table.prog}: {message}', file=sys.stderr)
  print(f'Try "{table.prog} --help" for more information', file=sys.stderr)
  sys.exit(table.exit_status)


def _same(a, b):
  """glibc counts two prefix matches as one when they are aliases."""
  return a.kind == b.kind and (a.short or a.name) == (b.short or b.name)


def _long(table, argv, i):
  """The option at argv[i] ('--NAME[=VALUE]'): (option, value, next i)."""
  text = argv[i][2:]
  name, eq, value = text.partition('=')
  exact = [o for o in table.options if o.name == name]
  if exact:
    found = exact[0]
  else:
    matches = [o for o in table.options if o.name.startswith(name)]
    if not matches:
      raise UsageError(f"unrecognized option '--{text}'")
    differing = [o for o in matches[1:] if not _same(o, matches[0])]
    if differing:
      names = ' '.join(f"'--{o.name}'" for o in [matches[0], *differing])
      raise UsageError(f"option '--{text}' is ambiguous; possibilities: "
                       f'{names}')
    found = matches[0]
  if eq:
    if found.kind == NO:
      raise UsageError(f"option '--{found.name}' doesn't allow an argument")
    return found, value, i + 1
  if found.kind == REQUIRED:
    if i + 1 >= len(argv):
      raise UsageError(f"option '--{found.name}' requires an argument")
    return found, argv[i + 1], i + 2
  return found, None, i + 1


def _shorts(table, argv, i):
  """The cluster at argv[i] ('-vN2'): ([(option, value)...], next i)."""
  cluster, found, j = argv[i][1:], [], 0
  while j < len(cluster):
    option = table.shorts.get(cluster[j])
    if option is None:
      raise UsageError(f"invalid option -- '{cluster[j]}'")
    rest = cluster[j + 1:]
    if option.kind == NO:
      found.append((option, None))
      j += 1
      continue
    if rest:
      found.append((option, rest))
    elif option.kind == OPTIONAL:
      found.append((option, None))
    elif i + 1 < len(argv):
      found.append((option, argv[i + 1]))
      return found, i + 2
    else:
      raise UsageError(f"option requires an argument -- '{cluster[j]}'")
    break
  return found, i + 1


def parse(table, argv):
  """Yields (option, value) in command-line order, then ('operands', list).

  The caller checks each option's value as it comes, as Slurm does, so the
  first bad option (of either kind) is the one reported; a getopt error
  ends the command where it occurs.
  """
  operands, i = [], 0
  while i < len(argv):
    arg = argv[i]
    if arg == '--':
      operands += argv[i + 1:]
      break
    if not arg.startswith('-') or arg == '-':
      if table.stop_at_operand:
        operands += argv[i:]
        break
      operands.append(arg)
      i += 1
      continue
    try:
      if arg.startswith('--'):
        option, value, i = _long(table, argv, i)
        yield option, value
      else:
        found, i = _shorts(table, argv, i)
        yield from found
    except UsageError as e:
      refuse(table, str(e))
  yield 'operands', operands
