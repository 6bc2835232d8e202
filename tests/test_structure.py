"""The house's rules, read from the code: the config is read where
components are built and nowhere below, and no test module imports another
(shared helpers live in helper modules)."""

import ast
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = REPO / 'alexnet_jax'
# What may read a run's config: the commands (they parse it), the loop that
# hands it to the builders, the builders, validation, and the reader that
# makes a config out of a workdir's config.json.
READERS = {'main.py', 'train.py', 'build.py', 'task/validation.py',
           'task/saved_run.py', 'evaluate.py', 'predict.py',
           'visualize/__init__.py', 'visualize/__main__.py',
           'convert.py', 'prepare.py'}
CONFIG_NAMES = ('config', 'cfg')


def config_uses(tree: ast.AST) -> list:
  """(line, what) for each read of a name `config` (attribute, item,
  .get) and each function that takes a parameter called so."""
  uses = []
  for node in ast.walk(tree):
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
      args = node.args.args + node.args.kwonlyargs + node.args.posonlyargs
      if any(a.arg in CONFIG_NAMES for a in args):
        uses.append((node.lineno, f'def {node.name}(config)'))
    elif (isinstance(node, (ast.Attribute, ast.Subscript)) and
          isinstance(node.value, ast.Name) and
          node.value.id in CONFIG_NAMES):
      uses.append((node.lineno, ast.unparse(node)))
  return uses


def modules():
  return sorted(p for p in PACKAGE.rglob('*.py'))


def test_no_module_below_the_builders_reads_the_config():
  """Each component takes what it needs as arguments (`build.py`)."""
  offenders = {}
  for path in modules():
    rel = str(path.relative_to(PACKAGE))
    if rel in READERS:
      continue
    uses = config_uses(ast.parse(path.read_text()))
    if uses:
      offenders[rel] = uses[:3]
  assert not offenders, offenders


def test_the_rule_catches_a_reader():
  """The check above fails on a module that reads a field or takes one."""
  assert config_uses(ast.parse('def f(x):\n  return config.batch_size\n'))
  assert config_uses(ast.parse('def f(config):\n  return 1\n'))
  assert config_uses(ast.parse("def f(c):\n  return config['model']\n"))
  assert not config_uses(ast.parse('def f(batch_size):\n  return 1\n'))


@pytest.mark.parametrize('path', sorted((REPO / 'tests').glob('test_*.py')),
                         ids=lambda p: p.name)
def test_no_test_module_imports_another(path):
  tree = ast.parse(path.read_text())
  imported = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.ImportFrom) and node.module:
      imported.add(node.module)
      imported.update(f'{node.module}.{a.name}' for a in node.names)
    elif isinstance(node, ast.Import):
      imported.update(a.name for a in node.names)
  others = sorted(m for m in imported
                  if m.split('.')[-1].startswith('test_') and
                  m.startswith('tests'))
  assert not others, others
