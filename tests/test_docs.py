"""The documentation's commands still match the code.

Every `python -m alexnet_jax.X ...` and `python -m benchmarks.X ...` command in
README.md, docs/*.md and BENCHMARKS.md (fenced blocks and inline code, line
continuations joined) names a module that exists and uses only flags it
defines; every `launch/tpu_vm.py ...` command is one the TPU launcher
accepts; every `--config.FIELD` is a field of configs/default.py and every
`--config=PATH` a file; relative links resolve; the README stays a short front
page. Flags are read from each command's source (absl DEFINE calls, argparse
add_argument calls), never by importing it: no subprocess, no JAX.
"""

import ast
import pathlib
import re
import shlex
import sys

import pytest

from configs import default

REPO = pathlib.Path(__file__).resolve().parents[1]
README = REPO / 'README.md'
DOCS = sorted((REPO / 'docs').glob('*.md'))
PAGES = [README, *DOCS, REPO / 'BENCHMARKS.md']  # Commands are checked here.
LINKING_PAGES = [README, *DOCS]  # Links are checked here.
README_MAX_LINES = 260

# absl's own flags, accepted by every absl command line.
ABSL_FLAGS = {'help', 'helpfull', 'helpshort', 'helpxml', 'flagfile',
              'verbosity', 'v', 'logtostderr', 'alsologtostderr', 'log_dir',
              'stderrthreshold', 'showprefixforinfo', 'only_check_args'}
ARGPARSE_FLAGS = {'help', 'h'}
ABSL_MODULES = {'main', 'evaluate', 'predict', 'convert', 'prepare'}

COMMAND = re.compile(r'python3? -m ((?:alexnet_jax|benchmarks)\.\w+)')
TPU_LAUNCHER = re.compile(r'(launch/tpu_vm\.py)')
FENCE = re.compile(r'^[ \t]*(```|~~~)[^\n]*\n(.*?)^[ \t]*\1[ \t]*$',
                   re.M | re.S)
INLINE = re.compile(r'`([^`]+)`')
LINK = re.compile(r'!?\[[^\]]*\]\(([^)\s]+)(?:\s+"[^"]*")?\)')
SHELL_SEPARATORS = {';', '&&', '||', '|', '>', '>>', '<', '&'}


# --- Parsing the pages -----------------------------------------------------------


def split_fences(text: str):
  """(the fenced blocks' contents, the text outside them)."""
  blocks = [m.group(2) for m in FENCE.finditer(text)]
  return blocks, FENCE.sub('\n', text)


def join_continuations(block: str) -> list:
  """Logical lines: a line ending in a backslash continues on the next."""
  lines, current = [], ''
  for line in block.splitlines():
    if line.rstrip().endswith('\\'):
      current += line.rstrip()[:-1] + ' '
    else:
      lines.append(current + line)
      current = ''
  if current:
    lines.append(current)
  return lines


def commands_in_line(line: str, command=COMMAND) -> list:
  """(module, [args]) for each `python -m MODULE args` (or `command`) in a
  shell line; the arguments end at a shell separator or a comment."""
  found = []
  matches = list(command.finditer(line))
  for match, after in zip(matches, matches[1:] + [None]):
    rest = line[match.end():after.start() if after else None]
    try:
      lexer = shlex.shlex(rest, posix=True, punctuation_chars=';&|<>')
      lexer.whitespace_split = True
      lexer.commenters = '#'
      tokens = list(lexer)
    except ValueError:  # An unbalanced quote in prose: whitespace will do.
      tokens = rest.split('#')[0].split()
    args = []
    for token in tokens:
      if token in SHELL_SEPARATORS:
        break
      args.append(token)
    found.append((match.group(1), args))
  return found


def page_commands(text: str, command=COMMAND) -> list:
  """Every command of a page: in fenced blocks (continuations joined) and in
  inline code (which may wrap over lines)."""
  blocks, prose = split_fences(text)
  commands = []
  for block in blocks:
    for line in join_continuations(block):
      commands += commands_in_line(line, command)
  for span in INLINE.findall(prose):
    commands += commands_in_line(' '.join(span.split()), command)
  return commands


def all_commands():
  """(page, module, args) of every command; `python -m alexnet_jax.X`, a
  placeholder module, is left out."""
  return [(page, module, args) for page in PAGES
          for module, args in page_commands(page.read_text())
          if not is_placeholder(module.split('.', 1)[1])]


# --- What the code defines ----------------------------------------------------------


def is_placeholder(name: str) -> bool:
  """FIELD, X, KEY: names that stand for any field or module."""
  return name.isupper()


def module_path(module: str) -> pathlib.Path:
  """The file `python -m module` runs: module.py, or a package's __main__."""
  package = REPO.joinpath(*module.split('.'))
  if package.is_dir():
    return package / '__main__.py'
  return package.with_suffix('.py')


def defined_flags(module: str) -> set:
  """Flag names a command line defines, read from its source: absl's
  DEFINE_* calls (flags.DEFINE_string('name', ...), config_flags.DEFINE_
  config_file('config', ...)) or argparse's add_argument('--name', ...)."""
  tree = ast.parse(module_path(module).read_text())
  names = set()
  for node in ast.walk(tree):
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and node.args and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)):
      continue
    attr, first = node.func.attr, node.args[0].value
    if attr.startswith('DEFINE'):
      names.add(first)
    elif attr == 'add_argument':
      for arg in node.args:
        if isinstance(arg, ast.Constant) and str(arg.value).startswith('-'):
          names.add(str(arg.value).lstrip('-'))
  return names


def accepted_flags(module: str) -> set:
  short = module.split('.', 1)[1]
  if module.startswith('alexnet_jax.') and short in ABSL_MODULES:
    return defined_flags(module) | ABSL_FLAGS
  return defined_flags(module) | ARGPARSE_FLAGS


CONFIG_FIELDS = set(default.get_config().keys())


# --- The checks ---------------------------------------------------------------------


def test_the_parser_joins_continuations_and_stops_at_separators():
  text = ('```bash\n'
          '$ python -m alexnet_jax.main --config=configs/cifar10.py \\\n'
          '    --config.seed=1 # a comment --not_a_flag\n'
          'python -m benchmarks.cifar_feed --batch_size 8 && echo --nope\n'
          '```\n'
          '- a list item:\n'
          '  ```bash\n'
          '  python -m alexnet_jax.prepare --dataset=imagenette\n'
          '  python -m alexnet_jax.main --workdir=W\n'
          '  ```\n'
          'Prose with `python -m alexnet_jax.plot A\n  --out b.png` in it.\n')
  assert page_commands(text) == [
      ('alexnet_jax.main', ['--config=configs/cifar10.py', '--config.seed=1']),
      ('benchmarks.cifar_feed', ['--batch_size', '8']),
      ('alexnet_jax.prepare', ['--dataset=imagenette']),
      ('alexnet_jax.main', ['--workdir=W']),
      ('alexnet_jax.plot', ['A', '--out', 'b.png']),
  ]


def test_flag_sources_are_read():
  assert {'config', 'workdir', 'verbose', 'coordinator_address',
          'num_processes', 'process_id', 'coordinator_timeout'} <= \
      defined_flags('alexnet_jax.main')
  assert 'torch_weights' in defined_flags('alexnet_jax.convert')
  assert 'out' in defined_flags('alexnet_jax.plot')
  assert 'vs_tfdata' in defined_flags('benchmarks.image_pipeline')
  assert 'config' not in defined_flags('alexnet_jax.predict')


def test_pages_have_commands():
  pages = {page.name for page, _, _ in all_commands()}
  assert {'README.md', 'BENCHMARKS.md'} <= pages


def test_commands_name_existing_modules():
  missing = sorted({f'{page.name}: python -m {module}'
                    for page, module, _ in all_commands()
                    if not module_path(module).is_file()})
  assert not missing, missing


def test_commands_use_defined_flags():
  problems = []
  for page, module, args in all_commands():
    if not module_path(module).is_file():
      continue  # Reported by test_commands_name_existing_modules.
    flags = accepted_flags(module)
    for arg in args:
      if not arg.startswith('--'):
        continue
      name, _, value = arg[2:].partition('=')
      where = f'{page.name}: python -m {module} ... {arg}'
      if name.startswith('config.'):
        field = name[len('config.'):].split('.')[0]
        if 'config' not in flags:
          problems.append(f'{where}: the command takes no --config')
        elif not is_placeholder(field) and field not in CONFIG_FIELDS:
          problems.append(f'{where}: no config field {field!r}')
      elif name not in flags:
        problems.append(f'{where}: no flag --{name}')
      elif name == 'config' and value and value.endswith('.py') and not (
          REPO / value).is_file():
        problems.append(f'{where}: no config file {value}')
  assert not problems, '\n'.join(problems)


@pytest.mark.parametrize('page', PAGES, ids=lambda p: p.name)
def test_config_fields_and_files_named_anywhere_exist(page):
  """Also outside commands: prose naming `--config.FIELD` or a config file."""
  text = page.read_text()
  problems = []
  for field in re.findall(r'--config\.(\w+)', text):
    if not is_placeholder(field) and field not in CONFIG_FIELDS:
      problems.append(f'no config field {field!r}')
  for path in re.findall(r'\b(configs/\w+\.py)\b', text):
    if not (REPO / path).is_file():
      problems.append(f'no config file {path}')
  assert not problems, f'{page.name}: {problems}'


@pytest.mark.parametrize('page', LINKING_PAGES, ids=lambda p: p.name)
def test_relative_links_resolve(page):
  _, prose = split_fences(page.read_text())
  broken = []
  for target in LINK.findall(prose):
    if re.match(r'[a-z][a-z0-9+.-]*:', target) or target.startswith('#'):
      continue  # https:, mailto:, and anchors within the page.
    path = target.split('#', 1)[0]
    if not (page.parent / path).exists():
      broken.append(target)
  assert not broken, f'{page.name}: {broken}'


def github_anchor(heading: str) -> str:
  """GitHub's id for a heading: lower case, punctuation dropped, spaces to -."""
  text = re.sub(r'[`*_]', '', heading.strip().lower())
  text = re.sub(r'[^\w\- ]', '', text)
  return text.replace(' ', '-')


@pytest.mark.parametrize('page', LINKING_PAGES, ids=lambda p: p.name)
def test_links_to_sections_find_them(page):
  _, prose = split_fences(page.read_text())
  broken = []
  for target in LINK.findall(prose):
    if re.match(r'[a-z][a-z0-9+.-]*:', target) or '#' not in target:
      continue
    path, anchor = target.split('#', 1)
    linked = (page.parent / path) if path else page
    if linked.suffix != '.md' or not linked.is_file():
      continue
    _, linked_prose = split_fences(linked.read_text())
    anchors = {github_anchor(h)
               for h in re.findall(r'^#{1,6} (.+)$', linked_prose, re.M)}
    if anchor not in anchors:
      broken.append(target)
  assert not broken, f'{page.name}: {broken}'


def test_readme_is_a_short_front_page():
  lines = README.read_text().splitlines()
  assert len(lines) <= README_MAX_LINES, (
      f'README.md has {len(lines)} lines; at most {README_MAX_LINES}: move '
      'reference material into docs/')


def test_readme_gives_both_test_commands():
  text = README.read_text()
  assert re.search(r'^python -m pytest$', text, re.M), text
  assert 'python -m pytest --full' in text


def test_tpu_launcher_commands_are_accepted():
  """What the docs tell users to run, the launcher takes (its options parsed
  as it parses them; nothing is run)."""
  sys.path.insert(0, str(REPO / 'launch'))
  from tpu import options  # pylint: disable=g-import-not-at-top
  found = [(page.name, args) for page in PAGES
           for _, args in page_commands(page.read_text(), TPU_LAUNCHER)
           if args]  # A bare `launch/tpu_vm.py` names it; it runs nothing.
  assert len(found) >= 6, found
  for page, args in found:
    try:
      options.parse(args, {}, str(REPO))
    except options.Stop as e:
      pytest.fail(f'{page}: launch/tpu_vm.py {" ".join(args)}: error: {e}')


def test_tpu_launcher_tables_are_documented():
  """--help leaves the VM states, training's outcomes and the exit statuses
  to docs/clusters.md: each state and each exit status of training the
  launcher acts on has its row there."""
  sys.path.insert(0, str(REPO / 'launch'))
  from tpu import supervise  # pylint: disable=g-import-not-at-top
  section = (REPO / 'docs' / 'clusters.md').read_text().split(
      '### Cloud TPU VMs\n')[1].split('\n### ')[0]
  first_cells = ' '.join(line.split('|')[1] for line in section.splitlines()
                         if line.startswith('| '))
  for state in ('NOT_FOUND', 'READY', 'PREEMPTED', 'TERMINATED', 'STOPPED',
                'CREATING'):
    assert f'`{state}`' in first_cells, state
  for status in (*supervise.ENDED, *supervise.RESTARTED, 255):
    assert re.search(rf'(^|[ (]){status}\b', first_cells), status
  assert "The launcher's exit status: 0" in section
