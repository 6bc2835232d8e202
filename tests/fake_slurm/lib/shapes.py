"""Argument shapes Slurm 25.05.8 checks while reading options, for the fakes.

Each check returns None when the real command accepts the value, else
(message, exit status) as the real command prints and exits. Sources, all
at tag slurm-25-05-8-1 of github.com/SchedMD/slurm:
- src/common/slurm_opt.c: arg_set_signal, _time_limit, _nodes, _mem,
  _exclusive, _open_mode, _gpu_bind, _kill_on_bad_exit; their error() line
  ("PROG: error: ...") and SLURM_ERROR make slurm_process_option_or_exit
  call exit(-1): status 255;
- src/common/proc_args.c: parse_int ("Invalid numeric value ..." and exit(1)
  itself), get_signal_opts and sig_name2num, verify_node_count;
- src/common/parse_time.c: time_str2secs and _is_valid_timespec;
- src/common/tres_bind.c: tres_bind_verify_cmdline (--gpu-bind).
A --gpus-per-node count is not read until the controller sees the job
(see cluster.gres_count).
"""

import re

# sig_name2num's table (src/common/proc_args.c signals_mapping).
SIGNALS = {'HUP': 1, 'INT': 2, 'QUIT': 3, 'ABRT': 6, 'KILL': 9, 'ALRM': 14,
           'TERM': 15, 'CHLD': 17, 'USR1': 10, 'USR2': 12, 'PIPE': 13,
           'URG': 23, 'CONT': 18, 'STOP': 19, 'TSTP': 20, 'TTIN': 21,
           'TTOU': 22, 'XCPU': 24}
INT_MAX = 2 ** 31 - 1


def strtol(text, base=10):
  """C's strtol: (value or None when no digits, the rest of the text)."""
  m = re.match(r'\s*([+-]?)(\d+)' if base == 10 else
               r'\s*([+-]?)((?:0[xX])?[0-9a-fA-F]+)', text)
  if not m:
    return None, text
  value = int(m.group(2), base if base == 10 else 16)
  return (-value if m.group(1) == '-' else value), text[m.end():]


def signal_number(text):
  """sig_name2num: a number, or a name with or without SIG; 0 if neither."""
  value, rest = strtol(text)
  if value is not None:
    return value if not rest.strip() else 0
  name = text.lstrip()
  if name[:3].upper() == 'SIG':
    name = name[3:]
  for known, number in SIGNALS.items():
    if name[:len(known)].upper() == known and not name[len(known):].strip():
      return number
  return 0


def warn_signal(text):
  """get_signal_opts on --signal=[{R|B}:]<sig_num>[@sig_time]:
  (batch_only, signal number, seconds before the end) or None."""
  batch = False
  if text[:1].upper() == 'R':
    text = text[1:]
  if text[:1].upper() == 'B':
    batch, text = True, text[1:]
  if text[:1].upper() == 'R':
    text = text[1:]
  if text[:1] == ':':
    text = text[1:]
  name, at, when = text.partition('@')
  number = signal_number(name) & 0xffff
  if not 1 <= number <= 0xffff:
    return None
  if not at:
    return batch, number, 60
  seconds, rest = strtol(when)
  if seconds is None:
    seconds, rest = 0, when  # strtol found no digits: 0, all of it left.
  if not 0 <= seconds <= 0xffff or rest:
    return None
  return batch, number, seconds


def _valid_timespec(text):
  digits = dashes = colons = 0
  in_digits = False
  for c in text:
    if c.isdigit():
      digits += not in_digits
      in_digits = True
    elif c == '-':
      in_digits, dashes = False, dashes + 1
      if colons:
        return False
    elif c == ':':
      in_digits, colons = False, colons + 1
    else:
      return False
  if not digits or dashes > 1 or colons > 2:
    return False
  least = {1: 3, 2: 4} if dashes else {1: 2, 2: 3}
  return digits >= least.get(colons, 0)


def time_limit(text):
  """time_str2secs: minutes, minutes:seconds, hours:minutes:seconds,
  days-hours, days-hours:minutes, days-hours:minutes:seconds, or
  -1/INFINITE/UNLIMITED."""
  if text.upper() in ('-1', 'INFINITE', 'UNLIMITED'):
    return None
  if not text or not _valid_timespec(text):
    return 'Invalid --time specification', 255
  return None


def node_count(text):
  """verify_node_count: N, MIN-MAX, or a list of counts (N,M or N:M...)."""
  def count(part):
    value, rest = strtol(part)
    if value is None:
      return -1, part
    if rest[:1] in ('k', 'K'):
      value, rest = value * 1024, rest[1:]
    if rest[:1] in ('m', 'M'):
      value, rest = value * 1024 * 1024, rest[1:]
    return (value if 0 <= value <= INT_MAX else -1), rest

  bad = lambda part: (f'"{part}" is not a valid node count', 255)
  if ',' in text or ':' in text:
    for token in filter(None, re.split(r'[,:-]', text)):
      value, rest = strtol(token)
      if value is None or rest:
        return bad(token)
    return None
  if '-' in text:
    low, high = text.split('-', 1)
    (least, rest_low), (most, rest_high) = count(low), count(high)
    if rest_low.strip():
      return bad(low)
    if rest_high.strip():
      return bad(high)
    least = max(least, 1)
    if most and most < least:
      return (f'Maximum node count {most} is less than minimum node count '
              f'{least}', 255)
    return None
  value, rest = count(text)
  return bad(text) if rest.strip() or value < 0 else None


def integer(option, text, positive=True):
  """parse_int, which exits 1 itself."""
  value, rest = strtol(text or '')
  if value is None or rest or value < 0 or (positive and value <= 0):
    return f'Invalid numeric value "{text}" for {option}.', 1
  if value >= INT_MAX:
    return f'Numeric argument ({value}) too large for {option}.', 1
  return None


def kill_on_bad_exit(text):
  """-K/--kill-on-bad-exit[=N]: no value means 1; N >= 0, non-zero kills."""
  return None if text is None else integer('--kill-on-bad-exit', text, False)


def _number_list(text, base):
  for token in text.split(','):
    if base == 16 and token[:2] == '0x':
      token = token[2:]
    head, _, times = token.partition('*')
    value, rest = strtol(head, base)
    if value is None or value < 0 or rest or (times and strtol(times)[1]):
      return False
  return True


def _gres_bind(spec):
  """_valid_gres_bind: [verbose,]closest|none|map[_gpu]:LIST|
  mask[_gpu]:LIST|per_task:N|single:N (prefixes, as Slurm compares them)."""
  if spec[:8].lower() == 'verbose,':
    spec = spec[8:]
  low = spec.lower()
  if low.startswith(('closest', 'none')):
    return True
  for prefix, base in (('map_gpu:', 10), ('map:', 10), ('mask_gpu:', 16),
                       ('mask:', 16)):
    if low.startswith(prefix):
      return _number_list(spec[len(prefix):], base)
  for prefix in ('per_task:', 'single:'):
    if low.startswith(prefix):
      return (strtol(spec[len(prefix):])[0] or 0) >= 0
  return False


def gpu_bind(text):
  """tres_bind_verify_cmdline on gres/gpu:TEXT: each '+' part is
  gres/NAME:SPEC with a valid SPEC."""
  parts = f'gres/gpu:{text}'.split('+')
  for part in parts:
    name, colon, spec = part.partition(':')
    if not colon or not name.startswith('gres/') or not _gres_bind(spec):
      return f'Invalid --gpu-bind argument: {text}', 255
  return None


def memory(text):
  """str_to_mbytes: a number with an optional K, M, G or T suffix."""
  if re.fullmatch(r'\s*\d+[KkMmGgTt]?', text):
    return None
  return 'Invalid --mem specification', 255


def exclusive(text):
  if text is None or text.lower() in ('exclusive', 'oversubscribe', 'user',
                                      'mcs', 'topo'):
    return None
  return 'Invalid --exclusive specification', 255


def open_mode(text):
  if text[:1] in ('a', 'A', 't', 'T'):
    return None
  return 'Invalid --open-mode specification', 255


CHECKS = {
    'signal': lambda v: None if warn_signal(v) else (
        'Invalid --signal specification', 255),
    'time': time_limit,
    'nodes': node_count,
    'ntasks': lambda v: integer('--ntasks', v),
    'ntasks-per-node': lambda v: integer('--ntasks-per-node', v),
    'cpus-per-task': lambda v: integer('--cpus-per-task', v),
    'kill-on-bad-exit': kill_on_bad_exit,
    'gpu-bind': gpu_bind,
    'mem': memory,
    'exclusive': exclusive,
    'open-mode': open_mode,
}


def check(option, value):
  """(message, status) when the real command refuses OPTION=VALUE."""
  test = CHECKS.get(option)
  return test(value) if test else None
