"""Tiny configs, spaces and batches shared by the world-model, behaviour,
network and precision tests (not a test file itself)."""

import contextlib

import gymnasium
import numpy as np
import tensorflow as tf

from common import config as config_lib
from common import envs
from common import nets
from common import tfutils

# Small enough that one Agent.train step runs in about a second on one core.
TINY = {
    'jit': False,
    'precision': 32,
    'rssm': {'hidden': 16, 'deter': 16, 'stoch': 4, 'discrete': 4},
    'encoder': {'cnn_depth': 2, 'mlp_layers': [16, 16]},
    'decoder': {'cnn_depth': 2, 'mlp_layers': [16, 16]},
    'reward_head': {'layers': 2, 'units': 16},
    'discount_head': {'layers': 2, 'units': 16},
    'actor': {'layers': 2, 'units': 16},
    'critic': {'layers': 2, 'units': 16},
    'expl_head': {'layers': 2, 'units': 16},
    'disag_models': 3,
    'imag_horizon': 5,
    'dataset': {'batch': 3, 'length': 6},
}


def tiny_config(*blocks, **updates):
  """defaults + named blocks + the tiny sizes + `updates` (dotted keys)."""
  named = config_lib.load_configs()
  config = config_lib.Config(named['defaults'])
  for name in blocks:
    config = config.update(named[name])
  return config.update(TINY).update(updates)


def _flag():
  return gymnasium.spaces.Box(0, 1, (), bool)


def obs_space(image=None, vector=None):
  """image=(64, 64, C) adds a uint8 'image'; vector=N adds a float 'state'."""
  space = {
      'reward': gymnasium.spaces.Box(-np.inf, np.inf, (), np.float32),
      'is_first': _flag(), 'is_last': _flag(), 'is_terminal': _flag(),
  }
  if image:
    space['image'] = gymnasium.spaces.Box(0, 255, tuple(image), np.uint8)
  if vector:
    space['state'] = gymnasium.spaces.Box(
        -np.inf, np.inf, (vector,), np.float32)
  return space


def act_space(discrete=True, size=3):
  if discrete:
    return {'action': envs.OneHotBox(size)}
  return {'action': gymnasium.spaces.Box(-1, 1, (size,), np.float32)}


def batch(obs, act, b, t, seed=0, first_at=(0,), terminal_at=()):
  """A batch of sequences [b, t, ...] with random observations and actions;
  is_first at the steps `first_at`, is_terminal at `terminal_at`."""
  rng = np.random.default_rng(seed)
  data = {}
  for key, space in obs.items():
    if key in ('is_first', 'is_last', 'is_terminal'):
      continue
    if space.dtype == np.uint8:
      data[key] = rng.integers(0, 256, (b, t) + space.shape).astype(np.uint8)
    else:
      data[key] = rng.normal(size=(b, t) + space.shape).astype(np.float32)
  space = act['action']
  if getattr(space, 'discrete', False):
    data['action'] = np.eye(space.shape[0], dtype=np.float32)[
        rng.integers(0, space.shape[0], (b, t))]
  else:
    data['action'] = rng.uniform(-1, 1, (b, t) + space.shape).astype(np.float32)
  for key, steps in (('is_first', first_at), ('is_terminal', terminal_at),
                     ('is_last', terminal_at)):
    flags = np.zeros((b, t), bool)
    flags[:, list(steps)] = True
    data[key] = flags
  return {k: tf.constant(v) for k, v in data.items()}


def snapshot(module):
  """{name: numpy copy} of every variable of `module`."""
  return {n: v.numpy().copy()
          for n, v in tfutils.named_variables(module).items()}


def variable_names(module):
  """{id(variable): name}, one name per variable: where a variable is reachable
  on several paths (an optimizer's parameter list, a shared behaviour), the
  path through the network that owns it."""
  names = {}
  for name, var in tfutils.named_variables(module).items():
    owner = not any(part.endswith('_opt') for part in name.split('/'))
    if id(var) not in names or (owner and not names[id(var)][1]):
      names[id(var)] = (name, owner)
  return {key: name for key, (name, _) in names.items()}


def trainable_snapshot(module, variables=None):
  """{name: numpy copy} of the trainable variables of `module` (or of the
  given `variables`, named by their path in `module`)."""
  names = variable_names(module)
  variables = module.trainable_variables if variables is None else variables
  return {names[id(v)]: v.numpy().copy() for v in variables}


def unchanged(before, module):
  """Names of the variables in `before` whose values did not change."""
  now = tfutils.named_variables(module)
  return sorted(
      n for n, v in before.items() if np.array_equal(v, now[n].numpy()))


@contextlib.contextmanager
def precision(bits, device=None):
  """Sets the global compute dtype for the block and restores the previous
  one."""
  previous = nets.compute_dtype()
  nets.set_precision(bits, device=device)
  try:
    yield nets.compute_dtype()
  finally:
    _restore(previous)


def _restore(dtype):
  if dtype == tf.float32:
    nets.set_precision(32)
  elif dtype == tf.float16:
    nets.set_precision(16, device='gpu')
  else:
    nets.set_precision(16, device='cpu')
