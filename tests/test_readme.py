"""README.md: every command in it runs as written, and it stays short.

The command lines are taken from the README's code blocks (and its inline
code that starts with `make` or `python3 <script>`): `make` targets and
variables must be the Makefile's; `dreamerv2/train.py` command lines must
parse (`common.config.parse`, in-process: config names, keys and value types),
with `...` placeholders replaced by a temporary path; every `--flag` of
`dreamerv2/eval.py` and `common/plot.py` must be in the script's `--help`.
Repository files that commands and links name must exist, and the `api`
functions the Python examples call must be defined in `dreamerv2/api.py`.
"""

import ast
import functools
import pathlib
import re
import shlex
import subprocess
import sys

import pytest

from common import config as configlib

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = ROOT / 'README.md'
MAX_LINES = 230
TRAIN = 'dreamerv2/train.py'
HELP_SCRIPTS = ('dreamerv2/eval.py', 'common/plot.py')
SHELL_LANGS = ('', 'sh', 'bash', 'shell', 'console')
FENCE = re.compile(r'^```([\w-]*)[^\n]*\n(.*?)^```[ \t]*$', re.M | re.S)
ENV_ASSIGNMENT = re.compile(r'[A-Za-z_][A-Za-z0-9_]*=')
RELATIVE_PATH = re.compile(r'[\w.-]+(/[\w.-]+)+/?')


def readme():
  return README.read_text()


def code_blocks(text):
  """[(language, body)] of the fenced blocks."""
  return [(match.group(1), match.group(2)) for match in FENCE.finditer(text)]


def shell_lines(text):
  """The command lines of the shell blocks, continuation lines joined."""
  lines = []
  for lang, body in code_blocks(text):
    if lang not in SHELL_LANGS:
      continue
    pending = ''
    for line in body.splitlines():
      if line.rstrip().endswith('\\'):
        pending += line.rstrip()[:-1] + ' '
        continue
      lines.append(pending + line)
      pending = ''
    if pending:
      lines.append(pending)
  return [line.strip() for line in lines if line.strip()]


def inline_lines(text):
  """Inline code outside the fenced blocks that is a make or script command."""
  prose = FENCE.sub('', text)
  spans = [' '.join(span.split()) for span in re.findall(r'`([^`]+)`', prose)]
  scripts = (TRAIN,) + HELP_SCRIPTS
  return [
      span for span in spans
      if span.startswith('make ')
      or any(span.startswith(f'python3 {script}') for script in scripts)]


def commands(lines):
  """[(line, program, args)]: program is 'make' or a script path.

  A line may chain commands with &&, ; or |; leading VAR=value assignments
  are skipped; `# ...` comments are dropped.
  """
  found = []
  for line in lines:
    tokens = shlex.split(line, comments=True)
    segment = []
    for token in tokens + ['&&']:
      if token in ('&&', ';', '|', '||'):
        while segment and ENV_ASSIGNMENT.match(segment[0]):
          segment.pop(0)
        if segment and segment[0] == 'make':
          found.append((line, 'make', segment[1:]))
        elif (len(segment) > 1 and segment[0] in ('python3', 'python')
              and not segment[1].startswith('-')):
          found.append((line, segment[1], segment[2:]))
        segment = []
      else:
        segment.append(token)
  return found


def all_commands():
  text = readme()
  return commands(shell_lines(text) + inline_lines(text))


def flags(args):
  return [arg.partition('=')[0] for arg in args if arg.startswith('--')]


def fill_placeholders(args, path):
  return [str(path) if '...' in arg else arg for arg in args]


@functools.lru_cache(maxsize=None)
def script_help(script):
  result = subprocess.run(
      [sys.executable, str(ROOT / script), '--help'], cwd=ROOT,
      capture_output=True, text=True, timeout=60)
  assert result.returncode == 0, (script, result.stderr)
  return result.stdout


@functools.lru_cache(maxsize=None)
def makefile():
  text = (ROOT / 'Makefile').read_text()
  targets = set(re.findall(r'^([A-Za-z0-9_.-]+)\s*:(?!=)', text, re.M))
  variables = set(re.findall(r'^([A-Za-z_][A-Za-z0-9_]*)\s*[?:+]?=', text,
                             re.M))
  return targets, variables


def test_readme_is_short():
  lines = readme().count('\n')
  assert lines < MAX_LINES, (
      f'README.md has {lines} lines; keep it under {MAX_LINES} (details go '
      f'to docs/ and bench/README.md)')


def test_the_readme_shows_each_kind_of_command():
  programs = {program for _, program, _ in all_commands()}
  for program in ('make', TRAIN) + HELP_SCRIPTS:
    assert program in programs, f'no {program} command found in README.md'


def test_train_command_lines_parse(tmp_path, capsys):
  checked = 0
  for line, program, args in all_commands():
    if program != TRAIN:
      continue
    argv = fill_placeholders(args, tmp_path / 'logdir')
    if '--help' in argv or '-h' in argv:
      with pytest.raises(SystemExit) as exit_info:
        configlib.parse(argv)
      assert exit_info.value.code == 0, line
      assert '--rssm.deter' in capsys.readouterr().out, line
    else:
      try:
        configlib.parse(argv)
      except SystemExit as e:
        pytest.fail(f'{line}\n  exits {e.code}: {capsys.readouterr().err}')
    checked += 1
  assert checked


@pytest.mark.parametrize('script', HELP_SCRIPTS)
def test_script_flags_are_in_its_help(script):
  uses = [(line, args) for line, program, args in all_commands()
          if program == script]
  assert uses, f'README.md shows no {script} command'
  text = script_help(script)
  for line, args in uses:
    for flag in flags(args):
      assert re.search(rf'(?<![\w-]){re.escape(flag)}(?![\w-])', text), (
          f'{flag} is not in `{script} --help`: {line}')


def test_make_targets_and_variables_exist():
  targets, variables = makefile()
  checked = 0
  for line, program, args in all_commands():
    if program != 'make':
      continue
    for arg in args:
      name, equals, _ = arg.partition('=')
      if equals:
        assert name in variables, f'the Makefile has no variable {name}: {line}'
      elif not arg.startswith('-'):
        assert arg in targets, f'the Makefile has no target {arg}: {line}'
        checked += 1
  assert checked


def test_files_the_commands_name_exist():
  for line, program, args in all_commands():
    if program != 'make':
      assert (ROOT / program).is_file(), f'no {program}: {line}'
    for arg in args:
      if '...' in arg or arg.startswith(('~', '/', '-', '<')):
        continue
      if RELATIVE_PATH.fullmatch(arg) and '/' in arg and '.' in arg:
        assert (ROOT / arg).exists(), f'no {arg} in the repository: {line}'
  for line in shell_lines(readme()):
    for match in re.finditer(r'-r\s+(\S+)', line):
      assert (ROOT / match.group(1)).is_file(), line


def test_links_point_to_files():
  for target in re.findall(r'\]\(([^)\s]+)\)', readme()):
    if re.match(r'[a-z]+:', target) or target.startswith('#'):
      continue
    path = target.partition('#')[0]
    assert (ROOT / path).exists(), f'README.md links to a missing {target}'


def test_python_examples_call_functions_of_the_api():
  tree = ast.parse((ROOT / 'dreamerv2' / 'api.py').read_text())
  defined = {node.name for node in tree.body
             if isinstance(node, (ast.FunctionDef, ast.ClassDef))}
  called = set()
  for lang, body in code_blocks(readme()):
    if lang == 'python':
      ast.parse(body)  # The example is valid Python.
      called |= set(re.findall(r'\bapi\.(\w+)', body))
  assert called
  assert called <= defined, f'README.md calls api.{called - defined}'
