"""The configuration: named blocks of `configs.yaml` plus command-line flags.

    python3 dreamerv2/train.py --configs defaults atari \\
        --task atari_pong --rssm.deter 600

`parse(argv)` starts from the `defaults` block, applies the blocks named by
`--configs` left to right, then the `--key value` flags, and returns a `Config`.
Bad input prints one `error: ...` line to stderr and exits with status 2, before
anything is imported or written. This module checks syntax and types only: which
tasks or choices a key accepts is checked where the key is used.

Rules, in one place:
- `defaults` is always applied first. Naming it is optional, and allowed only
  as the first name (`--configs defaults atari` == `--configs atari`).
- A key in a block or an update is, in this order: an exact dotted path
  (`model_opt.lr`), a mapping that updates only the subkeys it names
  (`rssm: {deter: 600}`), or a regular expression that must fully match the
  dotted paths it sets (`.*\\.norm: layer`). Entries apply in the order written.
  Flags follow the same rules (`--rssm.deter 600`, `--.*\\.norm layer`).
- The type of every key is the type of its value in `defaults`. In YAML, an
  integral number written in e-notation without a point is an int (`steps: 1e8`,
  `capacity: 2e6`); write `1.0e3` for a float. Flag values are parsed to that
  type: ints accept `1e6` or `2.5e5` if integral, floats accept ints, bools
  accept True/False/true/false/1/0, strings take numbers as text
  (`actor_ent: 1e-3` -> '0.001'), lists accept comma separated values
  (`64,64`, or several words: `--grad_heads decoder reward`; `''` is the empty
  list), their elements typed like the default's elements (strings for an
  empty default).
- Lists are stored as tuples, so a Config cannot be changed in place; they are
  saved as YAML lists.
"""

import collections.abc
import decimal
import difflib
import io
import os
import pathlib
import re
import sys

from ruamel.yaml import YAML
from ruamel.yaml.constructor import SafeConstructor
from ruamel.yaml.representer import SafeRepresenter

from common import errors

CONFIGS_PATH = pathlib.Path(__file__).resolve().parent.parent / 'configs.yaml'

_SCALARS = (bool, int, float, str)
_BOOLS = {'true': True, 'false': False, '1': True, '0': False}
_SCI_INT = re.compile(r'[-+]?[0-9]+[eE]\+?[0-9]+')  # 1e8, 2E+6: no point


class ConfigError(errors.UsageError):
  """A run that cannot start as configured: the message says what to change.
  Every entry point exits 2 with it (common/errors.py)."""


class Config(collections.abc.Mapping):
  """An immutable nested mapping of hyperparameters with attribute access.

  `config.rssm.deter == config['rssm']['deter']`; groups of keys come back as
  Configs, leaves as int, float, bool, str or tuples of those. `update` returns
  a new Config; nothing changes a Config in place. A key named like a method
  (`update`, `flat`, `get`, ...) is read with `config['key']`.
  """

  __slots__ = ('_data',)

  def __init__(self, mapping=None, **kwargs):
    data = {}
    for key, value in {**dict(mapping or {}), **kwargs}.items():
      data[key] = _freeze(key, value)
    object.__setattr__(self, '_data', data)

  def __getitem__(self, key):
    value = self._data[key]
    return _wrap(value) if isinstance(value, dict) else value

  def __iter__(self):
    return iter(self._data)

  def __len__(self):
    return len(self._data)

  def __getattr__(self, name):
    if name.startswith('_'):
      raise AttributeError(name)
    try:
      return self[name]
    except KeyError:
      raise AttributeError(f"config has no key '{name}'") from None

  def __setattr__(self, name, value):
    raise AttributeError('Config is immutable; use config.update({...})')

  def __reduce__(self):
    return (Config, (_thaw(self._data),))

  def __repr__(self):
    return f'Config({_thaw(self._data)!r})'

  @property
  def flat(self):
    """A new dict of dotted keys to leaf values: {'rssm.deter': 1024, ...}."""
    return dict(_flatten(self._data))

  def update(self, mapping=None, **kwargs):
    """A new Config with the given keys set (see the module doc for key rules).

    Values are converted to the type of the current value. Raises KeyError for
    a key that names nothing and ValueError for a value of the wrong type.
    """
    flat = self.flat
    for key, value in _flatten_update({**dict(mapping or {}), **kwargs}):
      targets = _targets(key, flat)
      if not targets:
        raise KeyError(f"unknown config key '{key}'{_suggest(key, flat)}")
      for target in targets:
        try:
          flat[target] = _convert(value, flat[target])
        except ValueError as e:
          raise ValueError(f'{target} {e}') from None
    return Config(_unflatten(flat))

  def save(self, path):
    """Writes YAML to `path` atomically (common.utils.atomic_write)."""
    from common import utils
    stream = io.StringIO()
    _yaml().dump(_thaw(self._data), stream)
    utils.atomic_write(path, lambda f: f.write(stream.getvalue()), mode='w')

  @classmethod
  def load(cls, path):
    """Reads a Config written by `save`."""
    data = _yaml().load(pathlib.Path(path).read_text())
    if not isinstance(data, dict):
      raise ValueError(f'{path} does not hold a config (a YAML mapping)')
    return cls(data)


def load_configs(path=CONFIGS_PATH):
  """Reads configs.yaml into {name: block}; blocks are plain nested dicts."""
  blocks = _yaml().load(pathlib.Path(path).read_text())
  if not isinstance(blocks, dict) or 'defaults' not in blocks:
    raise ValueError(
        f"{path} must map config names to blocks, 'defaults' first")
  for name, block in blocks.items():
    if not isinstance(block, (dict, type(None))):
      raise ValueError(f"{path}: config '{name}' must be a mapping of keys")
  # Copy each block: a YAML alias (`dmc: *dmc_vision`) shares one dict.
  return {name: _copy(block or {}) for name, block in blocks.items()}


def parse(argv=None, configs_path=CONFIGS_PATH, prog='dreamerv2/train.py'):
  """The command line (without the program name) -> Config. Exits 2 on errors.

  `--help` / `-h` prints every key with its value after the given --configs
  and exits 0.
  """
  argv = sys.argv[1:] if argv is None else list(argv)
  with errors.exit_on_errors():
    return _parse(argv, configs_path, prog)


def diff(old, new):
  """[(dotted key, old value, new value)] where two configs differ.

  A key present on one side only is reported with None on the other side.
  """
  old_flat = _as_config(old).flat
  new_flat = _as_config(new).flat
  keys = list(old_flat) + [key for key in new_flat if key not in old_flat]
  return [
      (key, old_flat.get(key), new_flat.get(key)) for key in keys
      if key not in old_flat or key not in new_flat
      or old_flat[key] != new_flat[key]]


class _UsageError(errors.UsageError):
  """A bad command line."""


def _parse(argv, configs_path, prog):
  show_help, flags = _split_flags(argv)
  blocks = load_configs(configs_path)
  names = flags.pop('configs', ['defaults'])
  names = [name for value in names for name in value.split(',') if name]
  if not names:
    raise _UsageError(
        '--configs expects config names, e.g. --configs defaults atari')
  for index, name in enumerate(names):
    if name not in blocks:
      choices = ', '.join(blocks)
      raise _UsageError(f"unknown config '{name}' (choices: {choices})")
    if name == 'defaults' and index > 0:
      raise _UsageError(
          "'defaults' must come first in --configs "
          "(it is always applied first)")
  names = [name for name in names if name != 'defaults']
  config = Config(blocks['defaults'])
  for name in names:
    try:
      config = config.update(blocks[name])
    except (KeyError, ValueError) as e:
      raise _UsageError(f"config '{name}' in {configs_path}: {e.args[0]}")
  if show_help:
    _print_help(_help(config, ['defaults'] + names, blocks, prog))
  flat = config.flat
  updates = {}
  for key, values in flags.items():
    try:
      targets = _targets(key, flat)
    except ValueError as e:
      raise _UsageError(f'--{e.args[0]}')
    if not targets:
      raise _UsageError(f'unknown flag --{key}{_suggest(key, flat)}')
    for target in targets:
      name = f'--{key}' if target == key else f'--{key} (setting {target})'
      updates[target] = _convert_flag(name, values, flat[target])
  return config.update(updates)


def _split_flags(argv):
  """['--a', '1', '--b=2,3', '-h'] -> (True, {'a': ['1'], 'b': ['2,3']})."""
  show_help, flags, key = False, {}, None
  for token in argv:
    if token in ('-h', '--help'):
      show_help, key = True, None
    elif token.startswith('--'):
      key, equals, value = token[2:].partition('=')
      if not key:
        raise _UsageError(f"bad flag '{token}': flags look like --key value")
      if key in flags:
        raise _UsageError(f'--{key} given twice')
      flags[key] = [value] if equals else []
      key = None if equals else key
    elif key is None:
      raise _UsageError(
          f"unexpected argument '{token}': flags look like --key value")
    else:
      flags[key].append(token)
  return show_help, flags


def _convert_flag(name, values, default):
  kind = _kind(default)
  if not values:
    raise _UsageError(f'{name} expects a value ({kind})')
  if isinstance(default, tuple):
    values = [','.join(values)]
  if len(values) > 1:
    got = ' '.join(repr(value) for value in values)
    raise _UsageError(f'{name} expects one value ({kind}), got {got}')
  try:
    return _convert(values[0], default)
  except ValueError as e:
    raise _UsageError(f'{name} {e}')


def _targets(key, flat):
  """The dotted keys that `key` sets: itself, or those its regex fully
  matches."""
  if key in flat:
    return [key]
  group = [k for k in flat if k.startswith(key + '.')]
  if group:
    example = ', '.join(group[:3]) + (', ...' if len(group) > 3 else '')
    raise ValueError(
        f'{key} is a group of keys ({example}); set them one by one')
  try:
    pattern = re.compile(key)
  except re.error:
    return []
  return [k for k in flat if pattern.fullmatch(k)]


def _suggest(key, flat):
  nested = [k for k in flat if k.endswith('.' + key)]
  close = difflib.get_close_matches(key, list(flat), n=5)
  matches = list(dict.fromkeys(nested + close))[:5]
  if not matches:
    return ' (no close matches; --help lists all keys)'
  return f" (close matches: {', '.join(matches)})"


def _convert(value, default):
  """`value` (flag text or a YAML value) as the type of `default`."""
  if not isinstance(default, tuple):
    return _convert_scalar(value, default)
  element = default[0] if default else ''
  if isinstance(value, str):
    items = [item.strip() for item in value.split(',')] if value.strip() else []
  elif isinstance(value, (list, tuple)):
    items = list(value)
  else:
    raise ValueError(f'expects {_kind(default)}, got {value!r}')
  try:
    return tuple(_convert_scalar(item, element) for item in items)
  except ValueError:
    raise ValueError(f'expects {_kind(default)}, got {value!r}') from None


def _convert_scalar(value, default):
  if isinstance(default, bool):
    if isinstance(value, bool):
      return value
    if isinstance(value, str) and value.strip().lower() in _BOOLS:
      return _BOOLS[value.strip().lower()]
  elif isinstance(default, int):
    if isinstance(value, int) and not isinstance(value, bool):
      return value
    if isinstance(value, float) and value.is_integer():
      return int(value)
    if isinstance(value, str):
      try:
        number = decimal.Decimal(value.strip())
      except decimal.InvalidOperation:
        number = None
      if number is not None and number.is_finite() and number == int(number):
        return int(number)
  elif isinstance(default, float):
    if isinstance(value, (int, float)) and not isinstance(value, bool):
      return float(value)
    if isinstance(value, str):
      try:
        return float(value)
      except ValueError:
        pass
  elif isinstance(value, str):
    return value
  elif isinstance(value, (int, float)) and not isinstance(value, bool):
    return str(value)  # e.g. a schedule key given a constant: actor_ent: 1e-3
  raise ValueError(f'expects {_kind(default)}, got {value!r}')


def _kind(default):
  if isinstance(default, tuple):
    element = type(default[0]) if default else str
    names = {bool: 'bools', int: 'ints', float: 'floats', str: 'strings'}
    return f'a comma separated list of {names[element]}'
  if isinstance(default, bool):
    return 'a bool (True/False)'
  return {int: 'an int', float: 'a float', str: 'a string'}[type(default)]


def _help(config, names, blocks, prog):
  flat = config.flat
  width = max(len(key) for key in flat) + 2
  lines = [
      f'usage: {prog} [--configs NAME ...] [--KEY VALUE ...]',
      '',
      f"Named configs in configs.yaml: {', '.join(blocks)}.",
      '--configs applies them left to right over defaults; flags then set any',
      'key, dotted for nested keys (--rssm.deter 600). Keys and values after',
      f"--configs {' '.join(names)}:",
      '',
      ('Schedules (actor_ent, actor_grad_mix) are a number or, over agent '
       'steps,'),
      'linear(initial,final,duration), warmup(duration,value),',
      'exp(initial,final,halflife), horizon(initial,final,duration).',
      '']
  for key, value in flat.items():
    lines.append(f'  --{key:<{width}} {_format(value)}')
  return '\n'.join(lines)


def _print_help(text):
  """Prints the help and exits 0, also when the reader has gone
  (`--help | head`)."""
  try:
    print(text)
    sys.stdout.flush()
  except BrokenPipeError:
    # As Python's docs advise: stdout to devnull, so the flush at exit cannot
    # fail.
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
  sys.exit(0)


def _format(value):
  if isinstance(value, tuple):
    return ','.join(str(item) for item in value) if value else "''"
  return "''" if value == '' else str(value)


def _freeze(key, value):
  if not isinstance(key, str) or not key or '.' in key:
    raise ValueError(f'config keys must be names without dots, got {key!r}')
  if isinstance(value, collections.abc.Mapping):
    return {k: _freeze(k, v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    if not all(isinstance(item, _SCALARS) for item in value):
      raise TypeError(f'{key}: list elements must be int, float, bool or str')
    return tuple(value)
  if not isinstance(value, _SCALARS):
    raise TypeError(
        f'{key}: values must be int, float, bool, str or lists, got {value!r}')
  return value


def _wrap(data):
  """A Config around already frozen data, without copying it."""
  config = object.__new__(Config)
  object.__setattr__(config, '_data', data)
  return config


def _thaw(data):
  """Frozen data -> plain dicts and lists, for YAML and pickling."""
  if isinstance(data, dict):
    return {key: _thaw(value) for key, value in data.items()}
  return list(data) if isinstance(data, tuple) else data


def _copy(data):
  if isinstance(data, dict):
    return {key: _copy(value) for key, value in data.items()}
  return list(data) if isinstance(data, list) else data


def _as_config(value):
  return value if isinstance(value, Config) else Config(value)


def _flatten(data, prefix=''):
  for key, value in data.items():
    if isinstance(value, dict):
      yield from _flatten(value, prefix + key + '.')
    else:
      yield prefix + key, value


def _flatten_update(mapping, prefix=''):
  """Nested update mappings -> (dotted key or regex, value), in order."""
  for key, value in mapping.items():
    if isinstance(value, collections.abc.Mapping):
      yield from _flatten_update(value, prefix + key + '.')
    else:
      yield prefix + key, value


def _unflatten(flat):
  data = {}
  for key, value in flat.items():
    *groups, leaf = key.split('.')
    node = data
    for group in groups:
      node = node.setdefault(group, {})
    node[leaf] = value
  return data


class _Constructor(SafeConstructor):
  """Reads `1e8` as the int 100000000 (YAML 1.2 alone would give a float)."""

  def construct_yaml_float(self, node):
    text = self.construct_scalar(node)
    if _SCI_INT.fullmatch(text):
      mantissa, exponent = re.split('[eE]', text)
      return int(mantissa) * 10 ** int(exponent)
    return super().construct_yaml_float(node)


_Constructor.add_constructor(
    'tag:yaml.org,2002:float', _Constructor.construct_yaml_float)


class _Representer(SafeRepresenter):
  """Keeps key order and writes every float with a point (`1.0e+20`)."""

  def __init__(self, *args, **kwargs):
    super().__init__(*args, **kwargs)
    self.sort_base_mapping_type_on_output = False

  def represent_float(self, data):
    node = super().represent_float(data)
    if '.' not in node.value and 'e' in node.value:
      node.value = node.value.replace('e', '.0e', 1)
    return node


_Representer.add_representer(float, _Representer.represent_float)


def _yaml():
  yaml = YAML(typ='safe', pure=True)
  yaml.Constructor = _Constructor
  yaml.Representer = _Representer
  yaml.default_flow_style = None  # leaf lists and mappings on one line
  yaml.width = 1000
  return yaml
