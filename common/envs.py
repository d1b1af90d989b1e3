"""Environments with one interface, the wrappers that give it, and `make`.

Every env that `make` returns looks the same to the driver and the agent:

  env.obs_space  dict name -> gymnasium Box: 'image' (uint8 [H, W, C]) and/or
                 vectors (1-D float32, their own names), 'reward' (float32 ()),
                 'is_first', 'is_last', 'is_terminal' (bool ()); keys starting
                 with 'log_' are for logging only.
  env.act_space  {'action': Box}: discrete actions one-hot (the Box has
                 `discrete = True`), continuous actions in [-1, 1]. An action
                 of several parts (a gym MultiDiscrete or Dict) is one flat
                 vector of one-hot and [-1, 1] blocks, and its Box, an
                 ActionParts, lists them in `parts`.
  env.reset() -> obs, env.step({'action': array}) -> obs, env.close().

is_last marks the end of an episode (game over or time limit); is_terminal
only a true end of the game, so that the world model learns no discount of
zero at a time limit. The suite classes (Atari, DMC, Crafter, GymWrapper) take
their native actions (an index or a raw Box vector); OneHotAction,
NormalizeAction and PartsAction turn them into the interface above. MiniGrid
tasks are gymnasium envs seen from pixels (make_minigrid). gym_<id> tasks are
any id registered with gymnasium (gymnasium.make(id, **gym_kwargs) through
from_gym); ids of packages in GYM_PACKAGES import their package, 'module:Id'
imports module, as gymnasium.make does.

Optional packages (dm_control, crafter, minigrid) are imported only when used.
`where_to_run` says which tasks' envs must run in a child process.
"""

import difflib
import importlib
import importlib.util
import json
import multiprocessing
import os
import pickle
import re
import threading
import time
import traceback
import typing
from concurrent import futures

import gymnasium
import numpy as np

from common import choices
from common import errors

SUITES = ('atari', 'dmc', 'crafter', 'minigrid', 'gym')
EXTRAS = 'pip install -r requirements-extras.txt'
# gym_<id> tasks: the package that registers the ids starting so, as
# (module to import, pip name, what to use when the raw spaces do not fit).
GYM_PACKAGES = {
    'ALE/': ('ale_py', 'ale-py', 'the atari_<game> tasks'),
    'MiniGrid-': ('minigrid', 'minigrid', 'the minigrid_<name> tasks (pixels)'),
    'BabyAI-': ('minigrid', 'minigrid', 'the minigrid_<name> tasks (pixels)'),
}
# Tasks whose envs run in a child process whatever envs_parallel says, and
# the line printed when that overrides the config (where_to_run).
OWN_PROCESS = {
    'dmc_': ("DMC envs run in processes (envs_parallel process): MuJoCo's EGL "
             'renderer and TensorFlow crash when loaded into one process.'),
}


class UnknownTask(errors.UsageError):
  """A task that cannot be built as named: its suite, game or gym id does not
  exist, or its gym_kwargs are bad (so that callers report all as one)."""


class MissingPackage(errors.UsageError, ImportError):
  """An optional package that a task needs is not installed."""


class UnsupportedSpace(errors.UsageError):
  """A Gym observation or action space that the agent cannot use."""


class EnvCrashed(RuntimeError):
  """An env's process died (killed, or crashed in native code)."""


# Spaces --------------------------------------------------------------------


class OneHotBox(gymnasium.spaces.Box):
  """Box(0, 1, (n,)) of one-hot vectors: samples are one-hot, not uniform."""

  def __init__(self, n, seed=None):
    super().__init__(0, 1, (n,), np.float32, seed=seed)
    self.discrete = True
    self.n = n

  def sample(self, mask=None, probability=None):
    action = np.zeros(self.n, np.float32)
    action[self.np_random.integers(self.n)] = 1
    return action


class ActionPart(typing.NamedTuple):
  """One block of an ActionParts vector: `size` one-hot classes (kind
  'discrete') or `size` values in [-1, 1] (kind 'continuous')."""
  name: str
  kind: str
  size: int


PART_KINDS = ('discrete', 'continuous')


class ActionParts(gymnasium.spaces.Box):
  """The flat action of an action space of several parts (a gym
  MultiDiscrete or Dict, through PartsAction): the blocks of `parts`
  concatenated in order, one-hot for a discrete part, in [-1, 1] for a
  continuous one (dimensions without finite bounds keep theirs, as in
  NormalizeAction).

  `discrete` is True when every part is discrete: the vector is then all
  one-hot blocks, but not one one-hot, so code that acts on the vector reads
  `parts` first. Samples are valid per part.
  """

  def __init__(self, parts, low=None, high=None, seed=None):
    parts = tuple(ActionPart(str(n), k, int(s)) for n, k, s in parts)
    for part in parts:
      if part.kind not in PART_KINDS or part.size < 1:
        raise ValueError(
            f'Action part {part} must have kind {" or ".join(PART_KINDS)} '
            f'and a size of at least 1.')
    if not parts:
      raise ValueError('ActionParts needs at least one part.')
    if low is None:
      low = np.concatenate([
          np.full(p.size, 0 if p.kind == 'discrete' else -1) for p in parts])
    if high is None:
      high = np.ones(sum(p.size for p in parts))
    size = sum(p.size for p in parts)
    super().__init__(
        np.asarray(low, np.float32), np.asarray(high, np.float32), (size,),
        np.float32, seed=seed)
    self.parts = parts
    self.discrete = all(p.kind == 'discrete' for p in parts)

  def sample(self, mask=None, probability=None):
    blocks = []
    for part in self.parts:
      if part.kind == 'discrete':
        block = np.zeros(part.size, np.float32)
        block[self.np_random.integers(part.size)] = 1
      else:
        block = self.np_random.uniform(-1, 1, part.size).astype(np.float32)
      blocks.append(block)
    return np.concatenate(blocks)

  def __eq__(self, other):
    return (isinstance(other, ActionParts) and self.parts == other.parts
            and super().__eq__(other))

  def __repr__(self):
    parts = ', '.join(f'{p.name}: {p.kind} {p.size}' for p in self.parts)
    return f'ActionParts({parts})'


def _flag_space():
  return gymnasium.spaces.Box(0, 1, (), bool)


def _base_spaces():
  """The spaces every env has besides its observations."""
  return {
      'reward': gymnasium.spaces.Box(-np.inf, np.inf, (), np.float32),
      'is_first': _flag_space(),
      'is_last': _flag_space(),
      'is_terminal': _flag_space(),
  }


def _image_space(shape):
  return gymnasium.spaces.Box(0, 255, tuple(shape), np.uint8)


def _vector_space(size):
  return gymnasium.spaces.Box(-np.inf, np.inf, (size,), np.float32)


def _obs(reward, is_first, is_last, is_terminal, **observations):
  """An observation dict with the interface's dtypes."""
  return {
      **observations,
      'reward': np.float32(reward),
      'is_first': bool(is_first),
      'is_last': bool(is_last),
      'is_terminal': bool(is_terminal),
  }


def _resize(image, size, nearest=False):
  """Resize an [H, W, C] uint8 image to size (H, W) with area averaging (or
  nearest neighbour)."""
  import cv2
  if image.shape[:2] == tuple(size):
    return image.copy()
  channels = image.shape[2:]
  interpolation = cv2.INTER_NEAREST if nearest else cv2.INTER_AREA
  image = cv2.resize(image, (size[1], size[0]), interpolation=interpolation)
  return image.reshape(tuple(size) + channels)


# Task names ----------------------------------------------------------------


def _split_task(task):
  """'atari_pong' -> ('atari', 'pong'), 'gym_ALE/Pong-v5' -> ('gym',
  'ALE/Pong-v5'): the name after the first '_' is kept as written (gym ids
  hold '-', '/', ':' and capitals). An unknown suite is a user error."""
  suite, _, name = str(task).partition('_')
  if suite not in SUITES or not name:
    raise UnknownTask(
        f"Unknown task '{task}': a task is SUITE_NAME with SUITE one of "
        f"{', '.join(SUITES)} (e.g. atari_pong, dmc_walker_walk, "
        f"crafter_reward, minigrid_empty_5x5, gym_CartPole-v1).")
  return suite, name


def _require(module, package):
  """Raise MissingPackage unless `module` can be imported."""
  if importlib.util.find_spec(module) is None:
    raise MissingPackage(
        f"This task needs the Python package '{package}', which is not "
        f"installed. Install the optional extras with `{EXTRAS}` "
        f"(or `pip install {package}`).")


def _unknown(kind, name, task, known):
  """UnknownTask naming the bad name, close matches as task names, and all."""
  suite = task.split('_')[0]
  close = difflib.get_close_matches(name, known, n=5, cutoff=0.5)
  hint = (f" Close matches: {', '.join(f'{suite}_{c}' for c in close)}."
          if close else '')
  return UnknownTask(
      f"Unknown {kind} '{name}' in task '{task}'.{hint} "
      f"Known: {', '.join(sorted(known))}.")


def atari_game(task_or_name):
  """The ALE ROM id for 'atari_pong' or 'pong'; raises UnknownTask."""
  from ale_py import roms
  name = str(task_or_name)
  if name.startswith('atari_'):
    name = name[len('atari_'):]
  # The original's task names are snake_case ROM ids, except this one.
  rom = {'james_bond': 'jamesbond'}.get(name, name)
  known = roms.get_all_rom_ids()
  if rom not in known:
    known = [{'jamesbond': 'james_bond'}.get(rom, rom) for rom in known]
    raise _unknown('Atari game', name, f'atari_{name}', known)
  return rom


def dmc_domain_task(name):
  """'walker_walk' -> ('walker', 'walk'), also for multi-word domains."""
  os.environ.setdefault('MUJOCO_GL', 'egl')
  from dm_control import suite
  name = {'cup_catch': 'ball_in_cup_catch'}.get(name, name)
  for domain, task in suite.ALL_TASKS:
    if name == f'{domain}_{task}':
      return domain, task
  known = [f'{domain}_{task}' for domain, task in suite.ALL_TASKS]
  raise _unknown('DMC task', name, f'dmc_{name}', known)


def minigrid_env_id(name):
  """'empty_5x5' -> 'MiniGrid-Empty-5x5-v0', 'door_key_5x5' ->
  'MiniGrid-DoorKey-5x5-v0': names match ids up to case, '-' and '_'."""
  import minigrid  # Registers the MiniGrid-* ids.
  del minigrid
  def normalise(text):
    text = text.lower().replace('-', '').replace('_', '')
    return text.removeprefix('minigrid').removesuffix('v0')
  ids = [id_ for id_ in gymnasium.envs.registry if id_.startswith('MiniGrid-')]
  by_key = {normalise(id_): id_ for id_ in ids}
  if normalise(name) in by_key:
    return by_key[normalise(name)]
  # In the tasks' snake case: 'MiniGrid-DoorKey-5x5-v0' -> 'door_key_5x5'.
  known = []
  for id_ in ids:
    words = re.sub(r'(?<=[a-z0-9])(?=[A-Z])', '_', id_[len('MiniGrid-'):])
    known.append(words.replace('-', '_').lower().removesuffix('_v0'))
  raise _unknown('MiniGrid env', name, f'minigrid_{name}', known)


def _importable(module):
  """Whether `module` can be imported (a missing parent package counts)."""
  try:
    return importlib.util.find_spec(module) is not None
  except (ImportError, ValueError):
    return False


def _describe(space):
  """A gym space in one line for a message: gymnasium's own text where it
  fits one, else its kind and shape ('MultiDiscrete(shape (2, 2))'), since
  numpy prints an array of several rows on several lines."""
  spaces = gymnasium.spaces
  if isinstance(space, spaces.Dict):
    return 'Dict(' + ', '.join(
        f'{key!r}: {_describe(part)}'
        for key, part in space.spaces.items()) + ')'
  if isinstance(space, spaces.Tuple):
    return 'Tuple(' + ', '.join(map(_describe, space.spaces)) + ')'
  text = str(space)
  if '\n' not in text:
    return text
  if isinstance(space, (spaces.Box, spaces.MultiDiscrete)):
    dtype = f', {space.dtype}' if isinstance(space, spaces.Box) else ''
    return f'{type(space).__name__}(shape {space.shape}{dtype})'
  return errors.one_line(text)


def gym_id(name):
  """The id to give gymnasium.make for 'CartPole-v1', 'ALE/Pong-v5' or
  'module:Id', after importing what registers it.

  'module:Id' imports module (gymnasium's own syntax); an id starting as a
  key of GYM_PACKAGES imports that package. Raises MissingPackage for a
  package that is not installed, UnknownTask (with close registered ids) for
  an id that is not registered then.
  """
  task = f'gym_{name}'
  module, _, env_id = name.partition(':') if ':' in name else ('', '', name)
  modules = [module] if module else []
  for prefix, (package, pip, _) in GYM_PACKAGES.items():
    if env_id.startswith(prefix):
      if not _importable(package):
        raise MissingPackage(
            f"Task '{task}' needs the Python package '{pip}', which is not "
            f"installed: `pip install {pip}`.")
      modules.append(package)
  if module and not _importable(module):
    raise MissingPackage(
        f"Task '{task}' imports the module '{module}', which cannot be "
        f"imported: install the package that provides it (e.g. `pip install "
        f"{module}`).")
  for imported in modules:
    gymnasium.register_envs(importlib.import_module(imported))
  registry = gymnasium.envs.registry
  if env_id not in registry:
    # Suggest also the ids of the installed packages (ALE/..., MiniGrid-...).
    for package, _, _ in GYM_PACKAGES.values():
      if _importable(package):
        importlib.import_module(package)
    close = difflib.get_close_matches(env_id, list(registry), n=5, cutoff=0.6)
    hint = (f" Close matches: {', '.join(f'gym_{c}' for c in close)}."
            if close else '')
    raise UnknownTask(
        f"Unknown gym id '{env_id}' in task '{task}'.{hint} A gym task is "
        f"gym_<id> with an id registered with gymnasium (e.g. "
        f"gym_CartPole-v1, gym_ALE/Pong-v5, gym_MiniGrid-Empty-5x5-v0), or "
        f"gym_<module>:<id> to import the module that registers it first.")
  return env_id


def parse_gym_kwargs(text):
  """The gym_kwargs config value, a JSON object as text ('' or '{}': none),
  as a dict; UnknownTask (a ValueError) for other text."""
  if isinstance(text, dict):
    return dict(text)
  example = 'e.g. \'{"max_episode_steps": 500}\''
  try:
    value = json.loads(text) if str(text).strip() else {}
  except json.JSONDecodeError as error:
    raise UnknownTask(
        f'gym_kwargs {text!r} is not JSON ({error.msg} at character '
        f'{error.pos}): write a JSON object, {example}.') from None
  if not isinstance(value, dict):
    raise UnknownTask(
        f'gym_kwargs {text!r} is a JSON {type(value).__name__}, not an '
        f'object of keyword arguments: write a JSON object, {example}.')
  return value


def _gym_kwargs(task, suite, gym_kwargs):
  """gym_kwargs (None, a dict or JSON text) as a dict; only gym tasks take
  any, so that a config's gym_kwargs are not ignored silently."""
  gym_kwargs = parse_gym_kwargs(gym_kwargs if gym_kwargs is not None else {})
  if gym_kwargs and suite != 'gym':
    raise UnknownTask(
        f'gym_kwargs {json.dumps(gym_kwargs, default=repr)} are for '
        f"gym_<id> tasks only, not '{task}': leave gym_kwargs '{{}}'.")
  return gym_kwargs


def _make_gym(name, gym_kwargs):
  """gymnasium.make of a gym task's id, with its errors as ours."""
  env_id = gym_id(name)
  try:
    return gymnasium.make(env_id, **gym_kwargs)
  except gymnasium.error.DependencyNotInstalled as error:
    raise MissingPackage(
        f"Task 'gym_{name}': {errors.one_line(error)}") from None
  except TypeError as error:  # A keyword argument the env does not take.
    raise UnknownTask(
        f'gym_kwargs {json.dumps(gym_kwargs, default=repr)} do not fit '
        f"'{env_id}': {errors.one_line(error)}") from None


def _hint(env_id):
  """What else to try when a gym id's spaces do not fit ('' if nothing)."""
  for prefix, (_, _, hint) in GYM_PACKAGES.items():
    if env_id.startswith(prefix):
      return f' Or use {hint}.'
  return ''


def check_task(task, gym_kwargs=None):
  """Validate a task without TensorFlow, so that a run fails before it
  loads; raises UnknownTask, MissingPackage or UnsupportedSpace.

  Other suites are checked by name. A gym_<id> task's spaces are known only
  from its env, so check_task builds it once (gymnasium.make with gym_kwargs,
  a dict or JSON text; no reset) and closes it.
  """
  suite, name = _split_task(task)
  gym_kwargs = _gym_kwargs(task, suite, gym_kwargs)
  if suite == 'gym':
    env = _make_gym(name, gym_kwargs)
    try:
      GymWrapper(env)  # Raises UnsupportedSpace for spaces it cannot use.
    except UnsupportedSpace as error:
      env_id = name.partition(':')[2] if ':' in name else name
      raise UnsupportedSpace(
          f"Task '{task}': {error}{_hint(env_id)}") from None
    finally:
      env.close()
  elif suite == 'atari':
    _require('ale_py', 'ale-py')
    atari_game(name)
  elif suite == 'dmc':
    _require('dm_control', 'dm-control')
    dmc_domain_task(name)
  elif suite == 'crafter':
    if name not in ('reward', 'noreward'):
      raise _unknown('Crafter task', name, task, ['reward', 'noreward'])
    _require('crafter', 'crafter')
  elif suite == 'minigrid':
    _require('minigrid', 'minigrid')
    minigrid_env_id(name)


# Suites --------------------------------------------------------------------


class Atari:
  """Atari 2600 with the DreamerV2 protocol, on the raw ALE.

  The protocol of gymnasium's AtariPreprocessing (which the original used),
  written out because the wrapper repeats the previous frame when a game ends
  mid-repeat and this shows the last one (tests/test_envs.py); it is also a
  little faster (bench/env_speed.py prints both).

  Sticky actions (the ALE repeats the previous action with probability
  0.25 per frame), `action_repeat` frames per agent step with the last two
  frames max-pooled, a random number of no-op frames in [1, noops] at reset,
  grayscale, area-resized, the full action set of 18 and no terminal at a
  life loss (unless life_done). Actions are indices into the action set.
  """

  _LOCK = threading.Lock()

  def __init__(
      self, name, action_repeat=4, size=(64, 64), grayscale=True, noops=30,
      life_done=False, sticky=True, all_actions=True, seed=None):
    import ale_py
    from ale_py import roms
    game = atari_game(name)
    if seed is None:
      seed = np.random.SeedSequence().entropy % (2 ** 31)
    self._random = np.random.RandomState(seed)
    with self._LOCK:
      ale_py.ALEInterface.setLoggerMode(ale_py.LoggerMode.Error)
      self._ale = ale_py.ALEInterface()
      self._ale.setInt('random_seed', int(self._random.randint(2 ** 31)))
      self._ale.setFloat('repeat_action_probability', 0.25 if sticky else 0.0)
      self._ale.loadROM(roms.get_rom_path(game))
    if all_actions:
      self._actions = self._ale.getLegalActionSet()
    else:
      self._actions = self._ale.getMinimalActionSet()
    self._repeat = action_repeat
    self._size = tuple(size)
    self._grayscale = grayscale
    self._noops = noops
    self._life_done = life_done
    height, width = self._ale.getScreenDims()
    channels = 1 if grayscale else 3
    # The last two frames of a step, max-pooled against flicker.
    self._buffers = [
        np.zeros((height, width, channels), np.uint8) for _ in range(2)]
    self._lives = None

  @property
  def obs_space(self):
    channels = 1 if self._grayscale else 3
    return {'image': _image_space(self._size + (channels,)), **_base_spaces()}

  @property
  def act_space(self):
    return {'action': gymnasium.spaces.Discrete(len(self._actions))}

  def reset(self):
    self._ale.reset_game()
    # 1 to noops no-ops, as gym's AtariPreprocessing draws them.
    noops = self._random.randint(1, self._noops + 1) if self._noops else 0
    for _ in range(noops):
      self._ale.act(self._actions[0])  # Index 0 is NOOP in both sets.
      if self._ale.game_over():
        self._ale.reset_game()
    self._lives = self._ale.lives()
    self._grab(self._buffers[0])
    return _obs(0.0, True, False, False, image=self._image(pool=False))

  def step(self, action):
    action = self._actions[int(action['action'])]
    reward = 0.0
    for repeat in range(self._repeat):
      reward += self._ale.act(action)
      over = self._ale.game_over() or self._ale.game_truncated()
      if over:
        break
      if repeat == self._repeat - 2:
        self._grab(self._buffers[1])
    self._grab(self._buffers[0])
    # Pool only when the second-last frame of this step was grabbed.
    pool = self._repeat > 1 and repeat == self._repeat - 1
    terminal = self._ale.game_over()
    lives = self._ale.lives()
    if self._life_done and lives < self._lives:
      terminal = True
    self._lives = lives
    return _obs(
        reward, False, terminal or over, terminal,
        image=self._image(pool))

  def close(self):
    pass

  def _grab(self, buffer):
    if self._grayscale:
      self._ale.getScreenGrayscale(buffer[:, :, 0])
    else:
      self._ale.getScreenRGB(buffer)

  def _image(self, pool):
    image = self._buffers[0]
    if pool:
      image = np.maximum(image, self._buffers[1])
    return _resize(image, self._size)


class DMC:
  """DeepMind Control Suite from pixels: 'image' plus the proprio vectors."""

  def __init__(
      self, name, action_repeat=1, size=(64, 64), camera=-1, seed=None):
    _require('dm_control', 'dm-control')
    os.environ.setdefault('MUJOCO_GL', 'egl')
    from dm_control import suite
    domain, task = dmc_domain_task(name)
    self._env = suite.load(domain, task, task_kwargs={'random': seed})
    self._repeat = action_repeat
    self._size = tuple(size)
    if camera in (-1, None):
      camera = dict(quadruped=2).get(domain, 0)
    self._camera = camera
    self._keys = [
        key for key, spec in self._env.observation_spec().items()
        if int(np.prod(spec.shape)) > 0]

  @property
  def obs_space(self):
    spec = self._env.observation_spec()
    spaces = {'image': _image_space(self._size + (3,))}
    for key in self._keys:
      spaces[key] = _vector_space(int(np.prod(spec[key].shape)))
    return {**spaces, **_base_spaces()}

  @property
  def act_space(self):
    spec = self._env.action_spec()
    low = np.broadcast_to(spec.minimum, spec.shape).astype(np.float32)
    high = np.broadcast_to(spec.maximum, spec.shape).astype(np.float32)
    return {'action': gymnasium.spaces.Box(low, high, spec.shape, np.float32)}

  def reset(self):
    time_step = self._env.reset()
    return self._observe(time_step, 0.0, is_first=True)

  def step(self, action):
    action = np.asarray(action['action'])
    if not np.isfinite(action).all():
      raise ValueError(f'DMC received a non-finite action: {action}')
    reward = 0.0
    for _ in range(self._repeat):
      time_step = self._env.step(action)
      reward += time_step.reward or 0.0
      if time_step.last():
        break
    return self._observe(time_step, reward, is_first=False)

  def close(self):
    self._env.close()

  def _observe(self, time_step, reward, is_first):
    vectors = {
        key: np.asarray(time_step.observation[key], np.float32).reshape(-1)
        for key in self._keys}
    image = self._env.physics.render(*self._size, camera_id=self._camera)
    return _obs(
        reward, is_first, time_step.last(),
        time_step.last() and time_step.discount == 0,
        image=image, **vectors)


class Crafter:
  """Crafter with its own reward (or none) and achievement counts to log."""

  def __init__(self, outdir=None, reward=True, seed=None, size=(64, 64)):
    _require('crafter', 'crafter')
    import crafter
    self._env = crafter.Env(size=tuple(size), reward=reward, seed=seed)
    if outdir:
      self._env = crafter.Recorder(
          self._env, outdir, save_stats=True, save_video=False,
          save_episode=False)
    self._size = tuple(size)
    self._achievements = crafter.constants.achievements.copy()

  @property
  def obs_space(self):
    spaces = {
        'image': _image_space(self._size + (3,)),
        'log_reward': gymnasium.spaces.Box(-np.inf, np.inf, (), np.float32),
    }
    for name in self._achievements:
      spaces[f'log_achievement_{name}'] = gymnasium.spaces.Box(
          0, 2 ** 31 - 1, (), np.int32)
    return {**spaces, **_base_spaces()}

  @property
  def act_space(self):
    return {'action': gymnasium.spaces.Discrete(self._env.action_space.n)}

  def reset(self):
    image = self._env.reset()
    counts = {name: 0 for name in self._achievements}
    return self._observe(image, 0.0, True, False, False, 0.0, counts)

  def step(self, action):
    image, reward, done, info = self._env.step(int(action['action']))
    return self._observe(
        image, reward, False, done, info['discount'] == 0, info['reward'],
        info['achievements'])

  def close(self):
    pass

  def _observe(self, image, reward, first, last, terminal, log_reward, counts):
    logs = {
        f'log_achievement_{name}': np.int32(counts[name])
        for name in self._achievements}
    return _obs(
        reward, first, last, terminal, image=image,
        log_reward=np.float32(log_reward), **logs)


GYM_SUPPORTED = (
    'observations: Box uint8 [H, W, C] or [H, W] (images), Box with 0 or 1 '
    'dimensions (vectors), or a Dict of those; actions: Discrete, 1-D Box, '
    '1-D MultiDiscrete, or a Dict of those (not nested)')


def _single_action(space):
  """Whether the agent can use `space` as an action or a Dict action's part."""
  if isinstance(space, gymnasium.spaces.Discrete):
    return True
  if isinstance(space, gymnasium.spaces.Box):
    return len(space.shape) == 1
  if isinstance(space, gymnasium.spaces.MultiDiscrete):
    return space.nvec.ndim == 1 and space.nvec.size > 0
  return False


def check_gym_action(space, env=None):
  """Raise UnsupportedSpace unless the agent can use a gym action space.

  The one place that decides which gym actions are accepted: Discrete and
  1-D Box, which from_gym makes one-hot or [-1, 1], and a 1-D MultiDiscrete
  or a Dict of those three (not nested), which it makes one flat vector of
  parts (PartsAction).
  """
  if _single_action(space):
    return
  where = f' of {errors.one_line(env)}' if env is not None else ''
  if isinstance(space, gymnasium.spaces.Dict) and space.spaces:
    bad = [(k, v) for k, v in space.spaces.items() if not _single_action(v)]
    if not bad:
      return
    key, part = bad[0]
    raise UnsupportedSpace(
        f"Unsupported action space {_describe(space)}{where}: its part "
        f"'{key}' is {_describe(part)}. Supported {GYM_SUPPORTED}.")
  raise UnsupportedSpace(
      f'Unsupported action space {_describe(space)}{where}. Supported '
      f'{GYM_SUPPORTED}.')


def _plain_action(space):
  """GymWrapper's form of a gym action space: indices from 0 (no `start`),
  float32 Boxes."""
  if isinstance(space, gymnasium.spaces.Discrete):
    return gymnasium.spaces.Discrete(int(space.n))
  if isinstance(space, gymnasium.spaces.MultiDiscrete):
    return gymnasium.spaces.MultiDiscrete(space.nvec)
  if isinstance(space, gymnasium.spaces.Dict):
    return gymnasium.spaces.Dict(
        {key: _plain_action(part) for key, part in space.spaces.items()})
  low, high = space.low.astype(np.float32), space.high.astype(np.float32)
  return gymnasium.spaces.Box(low, high, space.shape, np.float32)


def _gym_action(space, action):
  """An action of `_plain_action(space)` as the env of `space` takes it:
  indices shifted by `start`, Boxes in their dtype."""
  if isinstance(space, gymnasium.spaces.Discrete):
    return int(action) + int(space.start)
  if isinstance(space, gymnasium.spaces.MultiDiscrete):
    index = np.asarray(action).astype(np.int64) + space.start
    return index.astype(space.dtype)
  if isinstance(space, gymnasium.spaces.Dict):
    return {key: _gym_action(part, action[key])
            for key, part in space.spaces.items()}
  return np.asarray(action, space.dtype)


class GymWrapper:
  """Any gymnasium env: images (uint8 [H, W, C] or [H, W]) and vectors.

  A single Box observation is named `obs_key` (default: 'image' for images,
  'vector' for vectors); a Dict keeps its keys. Actions stay native (an index
  for Discrete, a vector for Box, indices for MultiDiscrete, a dict for
  Dict; indices from 0): wrap with OneHotAction, NormalizeAction or
  PartsAction.
  terminated -> is_terminal and is_last; truncated -> is_last only.
  """

  SUPPORTED = GYM_SUPPORTED

  def __init__(self, env, obs_key=None, act_key='action', seed=None):
    self._env = env
    self._act_key = act_key
    self._seed = seed
    space = env.observation_space
    if isinstance(space, gymnasium.spaces.Dict):
      self._obs_key = None
      self._converters = {
          key: self._converter(key, value) for key, value in space.items()}
    else:
      self._obs_key = obs_key or (
          'image' if self._is_image(space) else 'vector')
      self._converters = {self._obs_key: self._converter(self._obs_key, space)}
    reserved = set(_base_spaces()) & set(self._converters)
    if reserved:
      raise UnsupportedSpace(
          f'Observation keys {sorted(reserved)} of {env} clash with the '
          f'names this interface adds ({", ".join(_base_spaces())}).')
    action = env.action_space
    check_gym_action(action, env)
    self._action_space = action

  @property
  def obs_space(self):
    spaces = {key: space for key, (space, _) in self._converters.items()}
    return {**spaces, **_base_spaces()}

  @property
  def act_space(self):
    return {self._act_key: _plain_action(self._action_space)}

  def reset(self):
    obs, _ = self._env.reset(seed=self._seed)
    self._seed = None  # Seed the first episode only; later ones continue.
    return self._observe(obs, 0.0, True, False, False)

  def step(self, action):
    action = _gym_action(self._action_space, action[self._act_key])
    obs, reward, terminated, truncated, _ = self._env.step(action)
    return self._observe(
        obs, reward, False, terminated or truncated, terminated)

  def close(self):
    self._env.close()

  @staticmethod
  def _is_image(space):
    return (
        isinstance(space, gymnasium.spaces.Box) and space.dtype == np.uint8
        and len(space.shape) in (2, 3))

  def _converter(self, key, space):
    """(interface space, function from a raw observation) for one key."""
    if self._is_image(space):
      shape = space.shape if len(space.shape) == 3 else space.shape + (1,)
      return (_image_space(shape),
              lambda x: np.asarray(x, np.uint8).reshape(shape))
    if isinstance(space, gymnasium.spaces.Box) and len(space.shape) <= 1:
      size = int(np.prod(space.shape))
      return (_vector_space(size),
              lambda x: np.asarray(x, np.float32).reshape(size))
    raise UnsupportedSpace(
        f"Unsupported observation space for '{key}': {_describe(space)}. "
        f"Supported {self.SUPPORTED}.")

  def _observe(self, obs, reward, first, last, terminal):
    if self._obs_key:
      obs = {self._obs_key: obs}
    obs = {key: convert(obs[key])
           for key, (_, convert) in self._converters.items()}
    return _obs(reward, first, last, terminal, **obs)


def from_gym(env, obs_key=None, seed=None, time_limit=0, size=None):
  """Any gymnasium env as an interface env, as the original's `api` does.

  Discrete actions become one-hot, Box actions are normalised to [-1, 1],
  MultiDiscrete and Dict actions one flat vector of such parts
  (PartsAction); with `size`, images of another size are resized to it
  (nearest neighbour, as the original).
  """
  env = GymWrapper(env, obs_key=obs_key, seed=seed)
  if size:
    resized = ResizeImage(env, size, nearest=True)
    env = resized if resized.keys else env
  action = env.act_space['action']
  if isinstance(action, gymnasium.spaces.Discrete):
    env = OneHotAction(env)
  elif isinstance(action, gymnasium.spaces.Box):
    env = NormalizeAction(env)
  else:
    env = PartsAction(env)
  if time_limit:
    env = TimeLimit(env, time_limit)
  return env


def make_minigrid(name, size=(64, 64), seed=None):
  """A MiniGrid env seen from pixels: the full grid rendered, resized.

  Returns the interface env: 'image' [*size, 3] uint8 and one-hot actions.
  The episode limit is MiniGrid's own (truncation -> is_last only).
  """
  _require('minigrid', 'minigrid')
  import minigrid  # Registers the MiniGrid-* ids.
  from minigrid.wrappers import ImgObsWrapper, RGBImgObsWrapper
  del minigrid
  env = ImgObsWrapper(RGBImgObsWrapper(gymnasium.make(name)))
  env = GymWrapper(env, obs_key='image', seed=seed)
  env = ResizeImage(env, size, keys=['image'])
  return OneHotAction(env)


# Wrappers ------------------------------------------------------------------


class ActionRepeat:
  """Repeat each action `repeat` times, for any interface env: the rewards
  summed, the last observation, and no more steps after an episode's end."""

  def __init__(self, env, repeat):
    if isinstance(repeat, bool) or int(repeat) != repeat or repeat < 1:
      raise ValueError(
          f'action_repeat {repeat!r} must be a whole number of at least 1.')
    self._env = env
    self._repeat = int(repeat)

  def __getattr__(self, name):
    return getattr(self._env, name)

  def step(self, action):
    reward = 0.0
    for _ in range(self._repeat):
      obs = self._env.step(action)
      reward += float(obs['reward'])
      if obs['is_last']:
        break
    return {**obs, 'reward': np.float32(reward)}


class TimeLimit:
  """End episodes after `duration` agent steps: is_last, not is_terminal."""

  def __init__(self, env, duration):
    self._env = env
    self._duration = duration
    self._step = None

  def __getattr__(self, name):
    return getattr(self._env, name)

  def reset(self):
    self._step = 0
    return self._env.reset()

  def step(self, action):
    if self._step is None:
      raise RuntimeError(
          'Call reset() before step() (and after an episode ends).')
    obs = self._env.step(action)
    self._step += 1
    if self._duration and self._step >= self._duration:
      obs = {**obs, 'is_last': True}
    if obs['is_last']:
      self._step = None
    return obs


class NormalizeAction:
  """Let the agent act in [-1, 1] on every dimension with finite bounds."""

  def __init__(self, env, key='action'):
    space = env.act_space[key]
    if not isinstance(space, gymnasium.spaces.Box):
      raise UnsupportedSpace(
          f'NormalizeAction needs a Box action, got {_describe(space)}.')
    self._env = env
    self._key = key
    self._scale = _BoxScale(space)
    self._space = gymnasium.spaces.Box(
        self._scale.low, self._scale.high, space.shape, np.float32)

  def __getattr__(self, name):
    return getattr(self._env, name)

  @property
  def act_space(self):
    return {**self._env.act_space, self._key: self._space}

  def step(self, action):
    orig = self._scale(np.asarray(action[self._key], np.float32))
    return self._env.step({**action, self._key: orig})


class _BoxScale:
  """[-1, 1] to a Box's bounds on its dimensions with finite bounds (the
  others pass through); low and high are the bounds the agent sees."""

  def __init__(self, space):
    self._mask = np.isfinite(space.low) & np.isfinite(space.high)
    self._low = np.where(self._mask, space.low, -1).astype(np.float32)
    self._high = np.where(self._mask, space.high, 1).astype(np.float32)
    self.low = np.where(self._mask, -1, space.low).astype(np.float32)
    self.high = np.where(self._mask, 1, space.high).astype(np.float32)

  def __call__(self, normed, clip=False):
    orig = (normed + 1) / 2 * (self._high - self._low) + self._low
    if clip:  # Rounding must not step outside the bounds.
      orig = np.clip(orig, self._low, self._high)
    return np.where(self._mask, orig, normed)


def _one_hot_index(vector, n, what):
  """The index of a one-hot vector of n classes; ValueError naming `what`
  for any other vector (straight-through samples in low precision round a
  little: 1e-2 is tolerated; NaN fails the comparison too)."""
  vector = np.asarray(vector)
  index = int(np.argmax(vector)) if vector.shape == (n,) else 0
  reference = np.zeros(n, np.float32)
  reference[index] = 1
  if vector.shape != reference.shape or not (
      np.abs(vector - reference).max() <= 1e-2):
    raise ValueError(
        f'{what} must be a one-hot vector of shape ({n},), got '
        f'{vector.tolist()} (shape {vector.shape}).')
  return index


class OneHotAction:
  """Let the agent choose a discrete action as a one-hot vector."""

  def __init__(self, env, key='action'):
    space = env.act_space[key]
    if not isinstance(space, gymnasium.spaces.Discrete):
      raise UnsupportedSpace(
          f'OneHotAction needs a Discrete action, got {_describe(space)}.')
    self._env = env
    self._key = key
    self._space = OneHotBox(int(space.n))

  def __getattr__(self, name):
    return getattr(self._env, name)

  @property
  def act_space(self):
    return {**self._env.act_space, self._key: self._space}

  def step(self, action):
    index = _one_hot_index(
        action[self._key], self._space.n, f"Action '{self._key}'")
    return self._env.step({**action, self._key: index})


class PartsAction:
  """Let the agent act on a MultiDiscrete or Dict action as one flat vector
  (an ActionParts): a one-hot block per categorical (each dimension of a
  MultiDiscrete, each Discrete) and a [-1, 1] block per Box, rescaled to its
  finite bounds as in NormalizeAction. step() gives the env the index
  vector or the dict back.

  Parts are named by the Dict's keys, a MultiDiscrete's dimensions by their
  index ('0', 'grid/1'), in the order of the Dict (gymnasium sorts its keys).
  """

  def __init__(self, env, key='action'):
    space = env.act_space[key]
    if isinstance(space, gymnasium.spaces.MultiDiscrete):
      fields = [(None, space)]
    elif isinstance(space, gymnasium.spaces.Dict):
      fields = list(space.spaces.items())
    else:
      raise UnsupportedSpace(
          f'PartsAction needs a MultiDiscrete or Dict action, got '
          f'{_describe(space)}.')
    check_gym_action(space)
    self._env = env
    self._key = key
    self._fields = []  # (key, space, [(part, offset)], _BoxScale or None)
    parts, lows, highs, offset = [], [], [], 0
    for name, field in fields:
      scale = None
      if isinstance(field, gymnasium.spaces.Discrete):
        own = [ActionPart(name, 'discrete', int(field.n))]
      elif isinstance(field, gymnasium.spaces.MultiDiscrete):
        own = [ActionPart(str(i) if name is None else f'{name}/{i}',
                          'discrete', int(n)) for i, n in enumerate(field.nvec)]
      else:
        scale = _BoxScale(field)
        own = [ActionPart(name, 'continuous', int(field.shape[0]))]
      blocks = []
      for part in own:
        blocks.append((part, offset))
        offset += part.size
        if scale is None:
          lows.append(np.zeros(part.size))
          highs.append(np.ones(part.size))
      if scale is not None:
        lows.append(scale.low)
        highs.append(scale.high)
      parts += own
      self._fields.append((name, field, blocks, scale))
    self._space = ActionParts(
        parts, np.concatenate(lows), np.concatenate(highs))

  def __getattr__(self, name):
    return getattr(self._env, name)

  @property
  def act_space(self):
    return {**self._env.act_space, self._key: self._space}

  def step(self, action):
    return self._env.step({**action, self._key: self.native(action[self._key])})

  def native(self, vector):
    """The wrapped env's action (an index vector or a dict) for a flat one;
    ValueError for a vector of another shape or a block that is not
    one-hot."""
    vector = np.asarray(vector, np.float32)
    if vector.shape != self._space.shape:
      raise ValueError(
          f"Action '{self._key}' must be a vector of shape "
          f"{self._space.shape} ({self._space}), got shape {vector.shape}.")
    values = {}
    for name, field, blocks, scale in self._fields:
      pieces = [vector[start:start + part.size] for part, start in blocks]
      if scale is not None:
        values[name] = scale(pieces[0], clip=True)
        continue
      index = [
          _one_hot_index(piece, part.size,
                         f"Part '{part.name}' of action '{self._key}'")
          for piece, (part, _) in zip(pieces, blocks)]
      if isinstance(field, gymnasium.spaces.Discrete):
        values[name] = index[0]
      else:
        values[name] = np.array(index, field.dtype)
    return values[None] if None in values else values


class ResizeImage:
  """Resize image observations (uint8 [H, W, C]) to `size`: the `keys` given,
  or every image whose size differs. Area averaging (cv2.INTER_AREA) by
  default; nearest neighbour with `nearest`, as the original's api does."""

  def __init__(self, env, size=(64, 64), keys=None, nearest=False):
    self._env = env
    self._size = tuple(size)
    spaces = env.obs_space
    if keys is None:
      keys = [k for k, v in spaces.items() if v.dtype == np.uint8
              and len(v.shape) == 3 and tuple(v.shape[:2]) != self._size]
    self.keys = list(keys)
    self._nearest = nearest

  def __getattr__(self, name):
    return getattr(self._env, name)

  @property
  def obs_space(self):
    spaces = dict(self._env.obs_space)
    for key in self.keys:
      spaces[key] = _image_space(self._size + spaces[key].shape[2:])
    return spaces

  def reset(self):
    return self._resize(self._env.reset())

  def step(self, action):
    return self._resize(self._env.step(action))

  def _resize(self, obs):
    obs = dict(obs)
    for key in self.keys:
      obs[key] = _resize(obs[key], self._size, self._nearest)
    return obs


# Building envs -------------------------------------------------------------


def make(
    task, mode='train', action_repeat=1, time_limit=0, size=(64, 64),
    grayscale=True, camera=-1, seed=None, outdir=None, gym_kwargs=None):
  """The interface env for a task name such as 'atari_pong'.

  mode is 'train' or 'eval'; both use the same protocol (Atari keeps sticky
  actions in eval), except that Crafter evaluates with its reward also for
  crafter_noreward, as the original does. time_limit counts agent steps
  (0 = the env's own). outdir is where Crafter writes its stats (train mode
  only). gym_<id> tasks are gymnasium.make(id, **gym_kwargs) (a dict, or JSON
  text as in the config) through from_gym, as api.train wraps a user's env
  (images resized to `size` by nearest neighbour), with ActionRepeat; other
  tasks take no gym_kwargs.
  """
  choices.check('mode', mode, ('train', 'eval'))
  suite, name = _split_task(task)
  gym_kwargs = _gym_kwargs(task, suite, gym_kwargs)
  if suite == 'gym':
    gym_env = _make_gym(name, gym_kwargs)
    try:
      env = from_gym(gym_env, seed=seed, size=size)
      if action_repeat != 1:
        env = ActionRepeat(env, action_repeat)
    except Exception:
      gym_env.close()
      raise
  elif suite == 'atari':
    env = Atari(
        name, action_repeat, size, grayscale, noops=30, life_done=False,
        sticky=True, all_actions=True, seed=seed)
    env = OneHotAction(env)
  elif suite == 'dmc':
    env = DMC(name, action_repeat, size, camera, seed=seed)
    env = NormalizeAction(env)
  elif suite == 'crafter':
    check_task(task)
    if action_repeat != 1:
      raise ValueError(f'Crafter has no action repeat; got {action_repeat}.')
    env = Crafter(
        outdir if mode == 'train' else None,
        reward=name == 'reward' or mode == 'eval', seed=seed, size=size)
    env = OneHotAction(env)
  elif suite == 'minigrid':
    check_task(task)
    if action_repeat != 1:
      raise ValueError(f'MiniGrid has no action repeat; got {action_repeat}.')
    env = make_minigrid(minigrid_env_id(name), size, seed)
  if time_limit:
    env = TimeLimit(env, time_limit)
  return env


def where_to_run(task, requested):
  """(strategy, reason): where the envs of `task` run when envs_parallel is
  `requested`. reason is None, or the one line to print when the strategy
  overrides the request (OWN_PROCESS: DMC always runs in a child process)."""
  choices.check('envs_parallel', requested, choices.PARALLEL)
  for prefix, reason in OWN_PROCESS.items():
    if str(task).startswith(prefix) and requested != 'process':
      return 'process', reason
  return requested, None


class Parallel:
  """Run an env in the caller's thread ('none'), a thread of its own
  ('thread'), or a child process ('process').

  `ctor` builds the env and must pickle for 'process' (e.g.
  functools.partial(make, 'gym_CartPole-v1', ...): a gym task's id travels,
  not a gym env). With blocking=False, reset and step return a callable that
  waits for the result, so that the driver can step several envs at once.
  With 'none' there is no other thread or process: the env is built, reset,
  stepped and closed in the thread that calls Parallel and its methods, and
  the callable holds a result already computed.

  Errors in the env are raised here, with the env's traceback attached as a
  note. A process receives actions and returns observations as raw bytes laid
  out by the spaces (`_Packing`); anything else travels pickled.
  """

  def __init__(self, ctor, strategy='process', name='env'):
    choices.check('envs_parallel', strategy, choices.PARALLEL)
    self.name = name  # In errors: e.g. 'atari_pong train env 0'.
    self._strategy = strategy
    self._env = None
    self._closed = False
    self._obs_packing = self._act_packing = None  # Until the spaces are known.
    if strategy == 'none':
      self._env = ctor()
    elif strategy == 'thread':
      self._pool = futures.ThreadPoolExecutor(max_workers=1)
      self._env = self._pool.submit(ctor).result()
    else:
      context = multiprocessing.get_context('spawn')
      self._conn, child = context.Pipe()
      self._process = context.Process(
          target=_worker, args=(child, pickle.dumps(ctor)), daemon=True)
      self._process.start()
      child.close()
      self._receive()  # Wait until the env is built (or raise its error).
    self.obs_space = self._call('obs_space')()
    self.act_space = self._call('act_space')()
    if strategy == 'process':
      self._obs_packing = _Packing(self.obs_space)
      self._act_packing = _Packing(self.act_space)

  def reset(self, blocking=True):
    promise = self._call('reset')
    return promise() if blocking else promise

  def step(self, action, blocking=True):
    promise = self._call('step', action)
    return promise() if blocking else promise

  def close(self):
    if self._closed:
      return
    self._closed = True
    if self._strategy == 'none':
      self._env and self._env.close()
    elif self._strategy == 'thread':
      self._env and self._pool.submit(self._env.close).result()
      self._pool.shutdown()
    else:
      try:
        self._conn.send_bytes(_CALL + pickle.dumps(('close', ())))
        self._conn.recv_bytes()
      except (OSError, EOFError):
        pass
      self._conn.close()
      self._process.join(5)
      if self._process.is_alive():
        self._process.terminate()
        self._process.join()

  def __del__(self):
    try:
      self.close()
    except Exception:
      pass

  def _call(self, name, *args):
    """Start `env.name(*args)` (or read the attribute); return a waiter."""
    if self._closed:
      raise RuntimeError('The env is closed.')
    if self._strategy == 'none':
      result = _run(self._env, name, args)
      return lambda: result
    if self._strategy == 'thread':
      return self._pool.submit(_run, self._env, name, args).result
    packed = None
    if name == 'step' and self._act_packing:
      packed = self._act_packing.pack(args[0])
    message = (
        _CALL + pickle.dumps((name, args)) if packed is None
        else _STEP + packed)
    try:
      self._conn.send_bytes(message)
    except OSError:  # A broken pipe: the process is gone.
      raise self._crashed() from None
    return self._receive

  def _receive(self):
    try:
      message = self._conn.recv_bytes()
    except (OSError, EOFError):
      raise self._crashed() from None
    if message[:1] == _OBS:
      return self._obs_packing.unpack(memoryview(message)[1:])
    status, payload = pickle.loads(memoryview(message)[1:])
    if status == 'error':
      error, text = payload
      error.add_note(f'Traceback in the env process of {self.name}:\n{text}')
      error.env = self.name  # Marks an error of the env, not of the caller.
      raise error
    return payload


  def _crashed(self):
    self._process.join(1)
    code = self._process.exitcode
    how = (f'signal {-code}' if code is not None and code < 0
           else f'exit code {code}')
    return EnvCrashed(
        f'the process of {self.name} (pid {self._process.pid}) died ({how})')


def _run(env, name, args):
  value = getattr(env, name)
  return value(*args) if callable(value) else value


# Message tags of the env process's pipe: a pickled (method, args) call, a
# step with a packed action; a packed observation, a pickled (status, value).
_CALL, _STEP, _OBS, _PICKLED = b'c', b's', b'o', b'p'


class _Packing:
  """Dicts of NumPy values as raw bytes, laid out by their spaces.

  Pickling an observation and an action per step costs a sizeable part of
  an Atari step (bench/README.md has the measurement). pack
  returns None for a dict that does not match the spaces exactly (other keys,
  shapes, dtypes or types), which then travels pickled.
  """

  def __init__(self, spaces):
    self._fields = []  # (key, shape, dtype, offset in bytes, count)
    offset = 0
    for key, space in spaces.items():
      if not isinstance(space, gymnasium.spaces.Box):
        self._fields = None  # Nothing to lay out: every dict goes pickled.
        return
      count = int(np.prod(space.shape))
      self._fields.append((key, space.shape, space.dtype, offset, count))
      offset += count * space.dtype.itemsize

  def pack(self, values):
    if (self._fields is None or not isinstance(values, dict)
        or len(values) != len(self._fields)):
      return None
    parts = []
    for key, shape, dtype, _, _ in self._fields:
      value = values.get(key)
      if shape == () and dtype == bool:
        fits = type(value) is bool  # Flags are Python bools (see _obs).
      else:
        kind = np.generic if shape == () else np.ndarray
        fits = (isinstance(value, kind) and value.dtype == dtype
                and value.shape == shape)
      if not fits:
        return None
      parts.append(np.asarray(value).tobytes())
    return b''.join(parts)

  def unpack(self, data):
    values = {}
    for key, shape, dtype, offset, count in self._fields:
      array = np.frombuffer(data, dtype, count, offset)
      if shape == ():
        values[key] = bool(array[0]) if dtype == bool else array[0]
      else:
        values[key] = array.reshape(shape).copy()
    return values


def _worker(conn, ctor):
  """The env process: build the env, then answer (method, args) messages."""
  try:
    env = pickle.loads(ctor)()
    obs_packing = _Packing(env.obs_space)
    act_packing = _Packing(env.act_space)
    _send(conn, 'ok', None)
  except Exception as error:
    _send_error(conn, error)
    conn.close()
    return
  while True:
    try:
      _await_message(conn)
      message = conn.recv_bytes()
    except (EOFError, OSError, KeyboardInterrupt):
      break  # The parent went away.
    name = None
    try:
      if message[:1] == _STEP:
        name, args = 'step', (act_packing.unpack(memoryview(message)[1:]),)
      else:
        name, args = pickle.loads(memoryview(message)[1:])
      result = _run(env, name, args)
      packed = obs_packing.pack(result) if name in ('reset', 'step') else None
      if packed is None:
        _send(conn, 'ok', result)
      else:
        conn.send_bytes(_OBS + packed)
    except Exception as error:
      _send_error(conn, error)
    if name == 'close':
      break
  conn.close()


def _await_message(conn, seconds=3e-4):
  """Poll for the next call a moment before sleeping in recv.

  The driver's next step usually comes within this time, and waking a
  process that sleeps in recv can take longer than a fast env's step, which
  the lockstep of the envs waits for. sched_yield hands the core to the
  parent when it waits for one.
  """
  deadline = time.perf_counter() + seconds
  while time.perf_counter() < deadline and not conn.poll(0):
    os.sched_yield()


def _send(conn, status, value):
  conn.send_bytes(_PICKLED + pickle.dumps((status, value)))


def _send_error(conn, error):
  """Send an exception with its traceback text; keep its type if it pickles."""
  text = traceback.format_exc()
  try:
    pickle.loads(pickle.dumps(error))
  except Exception:
    error = RuntimeError(f'{type(error).__name__}: {error}')
  try:
    _send(conn, 'error', (error, text))
  except (OSError, EOFError):
    pass
