"""The config tables of docs/faithfulness.md ("Config values") match
configs.yaml.

Each table sits under a heading that names a block of configs.yaml in
backticks (### `atari` ...) and has the columns key | this project | 0216d33 |
07d906e | follows. Its `this project` cells must be what

    python3 dreamerv2/train.py --configs BLOCK --help

prints for the key, and so must the `key: value` spans of the "Same in all
three:" paragraph under it. These tests fail when someone changes configs.yaml
without updating the doc: a changed value, a renamed key or block, or a new key
set by a block that neither a row nor the "Same in all three" list names. The
release columns are not checked here: they come from the two releases'
configs.yaml, read as the section's text says.
"""

import contextlib
import io
import pathlib
import re

import pytest

from common import config as configlib

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = [ROOT / 'docs' / 'faithfulness.md']
HEADER = ['key', 'this project', '0216d33', '07d906e', 'follows']
HEADING = re.compile(r'#{2,6}\s')
BLOCK_HEADING = re.compile(r'#{2,6}\s+`([^`]+)`')
CODE = re.compile(r'`([^`]*)`')
SAME = 'Same in all three:'


def split_row(line):
  """'| `a` | `b\\|c` |' -> ['`a`', '`b|c`']: cells split at unescaped pipes."""
  cells = re.split(r'(?<!\\)\|', line.strip())
  assert cells[0] == '' and cells[-1] == '', line
  return [cell.strip().replace('\\|', '|') for cell in cells[1:-1]]


def code(cell, where):
  """The text of a cell that is exactly one `code span`."""
  match = CODE.fullmatch(cell)
  assert match, f'{where}: expected one `code span`, got {cell!r}'
  return match.group(1)


def parse_doc(path):
  """[{'block', 'line', 'rows': [(line, key, value)], 'same': [...]}] of the
  config tables in a markdown file, each with the block its heading names."""
  lines = path.read_text().splitlines()
  tables, block, index = [], None, 0
  while index < len(lines):
    line = lines[index]
    if HEADING.match(line):
      match = BLOCK_HEADING.match(line)
      block = match.group(1) if match else None
    elif line.startswith('|') and split_row(line) == HEADER:
      where = f'{path.name}:{index + 1}'
      assert block, f'{where}: a config table needs a heading naming its block'
      table = {'block': block, 'line': index + 1, 'rows': [], 'same': []}
      tables.append(table)
      index += 2  # The header and the |---| line.
      while index < len(lines) and lines[index].startswith('|'):
        cells = split_row(lines[index])
        where = f'{path.name}:{index + 1}'
        assert len(cells) == len(HEADER), f'{where}: {len(cells)} cells'
        table['rows'].append(
            (index + 1, code(cells[0], where), code(cells[1], where)))
        index += 1
      continue
    elif line.startswith(SAME) and tables and tables[-1]['block'] == block:
      start, text = index + 1, []
      while index < len(lines) and lines[index].strip():
        text.append(lines[index])
        index += 1
      for span in CODE.findall(' '.join(text)):
        key, sep, value = span.partition(': ')
        assert sep, f'{path.name}:{start}: expected `key: value`, got {span!r}'
        tables[-1]['same'].append((start, key, value))
      continue
    index += 1
  return tables


TABLES = [(path, table) for path in DOCS for table in parse_doc(path)]


def help_values(block):
  """{dotted key: value as --help prints it} after --configs BLOCK."""
  out = io.StringIO()
  with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
    configlib.parse(['--configs', block, '--help'])
  values = {}
  for line in out.getvalue().splitlines():
    if line.startswith('  --'):
      key, _, value = line[len('  --'):].partition(' ')
      values[key] = value.strip()
  return values


def test_docs_have_the_config_tables():
  assert DOCS, 'no docs/faithfulness*.md'
  blocks = {table['block'] for _, table in TABLES}
  assert {'defaults', 'atari', 'dmc_vision', 'dmc', 'dmc_proprio',
          'crafter'} <= blocks, blocks


@pytest.mark.parametrize(
    'path, table', TABLES,
    ids=[f"{path.name}:{table['line']}:{table['block']}"
         for path, table in TABLES])
def test_table_matches_configs_yaml(path, table):
  block = table['block']
  assert block in configlib.load_configs(), (
      f"{path.name}:{table['line']}: '{block}' is not a block of configs.yaml")
  values = help_values(block)
  keys = [key for _, key, _ in table['rows'] + table['same']]
  assert len(keys) == len(set(keys)), f'{block}: a key is listed twice'
  for line, key, value in table['rows'] + table['same']:
    where = f'{path.name}:{line} ({block})'
    assert key in values, f"{where}: configs.yaml has no key '{key}'"
    # configs.yaml changed without the doc: update the row (and re-check the
    # releases' values and the follows column), or the list it is in.
    assert value == values[key], (
        f"{where}: {key} is {values[key]} in configs.yaml, the doc says "
        f"{value}")


@pytest.mark.parametrize(
    'path, table', [(p, t) for p, t in TABLES if t['block'] != 'defaults'],
    ids=[f"{path.name}:{table['line']}:{table['block']}"
         for path, table in TABLES if table['block'] != 'defaults'])
def test_every_key_a_block_changes_is_listed(path, table):
  # A key a block newly sets to a new value needs a row, or a place in the
  # "Same in all three" list if it equals both releases' values.
  block = table['block']
  assert block in configlib.load_configs(), block
  listed = {key for _, key, _ in table['rows'] + table['same']}
  changed = [key for key, _, _ in configlib.diff(
      configlib.parse([]), configlib.parse(['--configs', block]))]
  missing = [key for key in changed if key not in listed]
  assert not missing, (
      f"{path.name}:{table['line']}: configs.yaml's '{block}' changes "
      f"{', '.join(missing)}, which its table does not list")


# A cell such as "`common/nets.py` `GRUCell`, `RSSM._stats`": the file, then
# names defined in it (a dotted name: a method of a class).
SOURCE = re.compile(r'`((?:common|dreamerv2)/\w+\.py)`((?:[ ,(]*`[\w.]+`)*)')
TEST = re.compile(r'`?(tests/test_\w+\.py)(?:::(test_\w+)(\*?))?')


def defined_names(path):
  import ast
  names = set()
  tree = ast.parse(path.read_text())
  for node in ast.walk(tree):
    if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
      names.add(node.name)
      if isinstance(node, ast.ClassDef):
        names.update(f'{node.name}.{item.name}' for item in node.body
                     if isinstance(item, ast.FunctionDef))
    elif isinstance(node, ast.Assign):
      names.update(t.id for t in node.targets if isinstance(t, ast.Name))
  return names


def test_every_place_and_test_the_doc_names_exists():
  # A row that points at code or a test that moved or was renamed misleads
  # the reader who checks it: the doc must follow the code.
  text = DOCS[0].read_text()
  checked = 0
  for match in SOURCE.finditer(text):
    path = ROOT / match.group(1)
    assert path.exists(), f'docs/faithfulness.md names {match.group(1)}'
    names = defined_names(path)
    for name in re.findall(r'`([\w.]+)`', match.group(2)):
      assert name in names or name.split('.')[-1] in names, (
          f'docs/faithfulness.md: {match.group(1)} defines no {name}')
      checked += 1
  for match in TEST.finditer(text):
    path = ROOT / match.group(1)
    assert path.exists(), f'docs/faithfulness.md names {match.group(1)}'
    if match.group(2):
      # test_decoder_* names every test that starts so.
      start = f'def {match.group(2)}' + ('' if match.group(3) else '(')
      assert start in path.read_text(), (
          f'docs/faithfulness.md: {match.group(1)} has no {match.group(2)}')
      checked += 1
  assert checked > 20, checked
