"""The shape of the code: line length and the seams between modules."""

import ast
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


def python_files():
  listed = subprocess.run(
      ['git', 'ls-files', '*.py'], cwd=ROOT, capture_output=True, text=True)
  if listed.returncode != 0:  # Not a git checkout: every file under ROOT.
    return sorted(p for p in ROOT.rglob('*.py') if '.venv' not in p.parts)
  return [ROOT / name for name in listed.stdout.split()]


def imported_modules(path):
  tree = ast.parse(path.read_text(), filename=str(path))
  names = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      names.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module:
      names.add(node.module)
      names.update(f'{node.module}.{alias.name}' for alias in node.names)
  return names


def test_every_python_line_fits_80_columns():
  long = [f'{path.relative_to(ROOT)}:{number}'
          for path in python_files()
          for number, line in enumerate(path.read_text().splitlines(), 1)
          if len(line) > 80]
  assert not long, long


@pytest.mark.parametrize('module', ['envs', 'replay', 'driver', 'logger'])
def test_the_loop_pieces_never_import_the_agent(module):
  names = imported_modules(ROOT / 'common' / f'{module}.py')
  assert not [n for n in names if n.split('.')[0] in ('dreamerv2', 'agent')]


def test_the_agent_never_imports_the_loop_pieces():
  for module in ('agent', 'expl'):
    names = imported_modules(ROOT / 'dreamerv2' / f'{module}.py')
    pieces = {f'common.{m}' for m in ('envs', 'replay', 'driver', 'logger')}
    assert not names & pieces, (module, names & pieces)


def test_choices_load_without_tensorflow():
  # train.py checks flags against these before TensorFlow loads.
  names = imported_modules(ROOT / 'common' / 'choices.py')
  assert not [n for n in names if n.split('.')[0] in (
      'tensorflow', 'tensorflow_probability', 'dreamerv2')]


def test_nothing_imports_the_train_script():
  # train.py is the command line's entry point; the loop is dreamerv2/loop.py.
  importers = [
      str(path.relative_to(ROOT)) for path in python_files()
      if path.name != 'train.py' and any(
          name in ('dreamerv2.train', 'train')
          for name in imported_modules(path))]
  assert not importers, importers


def test_common_never_imports_dreamerv2():
  importers = [
      str(path.relative_to(ROOT)) for path in (ROOT / 'common').glob('*.py')
      if any(n.split('.')[0] == 'dreamerv2' for n in imported_modules(path))]
  assert not importers, importers


def test_the_agent_knows_no_replicas_and_the_loop_is_short():
  # Distribution lives in dreamerv2/distribute.py, so that Agent reads like
  # the original's.
  source = (ROOT / 'dreamerv2' / 'agent.py').read_text()
  assert 'strategy' not in source and 'replica' not in source
  assert len((ROOT / 'dreamerv2' / 'loop.py').read_text().splitlines()) < 400


@pytest.mark.parametrize('module', [
    'common.rundir', 'common.config', 'common.choices', 'common.envs',
    'dreamerv2.build', 'dreamerv2.distribute'])
def test_the_checks_before_a_run_load_no_tensorflow(module):
  code = (f'import sys; import {module}; '
          'print("tensorflow" in sys.modules)')
  result = subprocess.run(
      [sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True)
  assert result.returncode == 0, result.stderr
  assert result.stdout.strip() == 'False'
