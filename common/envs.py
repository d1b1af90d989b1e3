"""Environments with one interface, the wrappers that give it, and `make`.

Every env that `make` returns looks the same to the driver and the agent:

  env.obs_space  dict name -> gymnasium Box: 'image' (uint8 [H, W, C]) and/or
                 vectors (1-D float32, their own names), 'reward' (float32 ()),
                 'is_first', 'is_last', 'is_terminal' (bool ()); keys starting
                 with 'log_' are for logging only.
  env.act_space  {'action': Box}: discrete actions one-hot (the Box has
                 `discrete = True`), continuous actions in [-1, 1].
  env.reset() -> obs, env.step({'action': array}) -> obs, env.close().

is_last marks the end of an episode (game over or time limit); is_terminal
only a true end of the game, so that the world model learns no discount of
zero at a time limit. The suite classes (Atari, DMC, Crafter, GymWrapper) take
their native actions (an index or a raw Box vector); OneHotAction and
NormalizeAction turn them into the interface above. MiniGrid tasks are
gymnasium envs seen from pixels (make_minigrid).

Optional packages (dm_control, crafter, minigrid) are imported only when used.
"""

import difflib
import importlib.util
import multiprocessing
import os
import pickle
import re
import threading
import time
import traceback
from concurrent import futures

import gymnasium
import numpy as np

SUITES = ('atari', 'dmc', 'crafter', 'minigrid')
PARALLEL = ('none', 'thread', 'process')  # envs_parallel: where an env runs.
EXTRAS = 'pip install -r requirements-extras.txt'


class UnknownTask(ValueError):
  """A task name whose suite or game does not exist."""


class MissingPackage(ImportError):
  """An optional package that a task needs is not installed."""


class UnsupportedSpace(ValueError):
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
  """'atari_pong' -> ('atari', 'pong'); an unknown suite is a user error."""
  suite, _, name = str(task).partition('_')
  if suite not in SUITES or not name:
    raise UnknownTask(
        f"Unknown task '{task}': a task is SUITE_NAME with SUITE one of "
        f"{', '.join(SUITES)} (e.g. atari_pong, dmc_walker_walk, "
        f"crafter_reward, minigrid_empty_5x5).")
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


def check_task(task):
  """Validate a task name without building the env (and without TF)."""
  suite, name = _split_task(task)
  if suite == 'atari':
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


class GymWrapper:
  """Any gymnasium env: images (uint8 [H, W, C] or [H, W]) and vectors.

  A single Box observation is named `obs_key` (default: 'image' for images,
  'vector' for vectors); a Dict keeps its keys. Actions stay native (an index
  for Discrete, a vector for Box): wrap with OneHotAction or NormalizeAction.
  terminated -> is_terminal and is_last; truncated -> is_last only.
  """

  SUPPORTED = (
      'observations: Box uint8 [H, W, C] or [H, W] (images), Box with 0 or 1 '
      'dimensions (vectors), or a Dict of those; actions: Discrete or 1-D Box')

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
    ok = isinstance(action, gymnasium.spaces.Discrete) or (
        isinstance(action, gymnasium.spaces.Box) and len(action.shape) == 1)
    if not ok:
      raise UnsupportedSpace(
          f'Unsupported action space {action} of {env}. Supported '
          f'{self.SUPPORTED}.')
    self._action_space = action

  @property
  def obs_space(self):
    spaces = {key: space for key, (space, _) in self._converters.items()}
    return {**spaces, **_base_spaces()}

  @property
  def act_space(self):
    action = self._action_space
    if isinstance(action, gymnasium.spaces.Discrete):
      return {self._act_key: gymnasium.spaces.Discrete(int(action.n))}
    low, high = action.low.astype(np.float32), action.high.astype(np.float32)
    return {self._act_key: gymnasium.spaces.Box(
        low, high, action.shape, np.float32)}

  def reset(self):
    obs, _ = self._env.reset(seed=self._seed)
    self._seed = None  # Seed the first episode only; later ones continue.
    return self._observe(obs, 0.0, True, False, False)

  def step(self, action):
    action = action[self._act_key]
    if isinstance(self._action_space, gymnasium.spaces.Discrete):
      action = int(action) + int(self._action_space.start)
    else:
      action = np.asarray(action, self._action_space.dtype)
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
        f"Unsupported observation space for '{key}': {space}. Supported "
        f"{self.SUPPORTED}.")

  def _observe(self, obs, reward, first, last, terminal):
    if self._obs_key:
      obs = {self._obs_key: obs}
    obs = {key: convert(obs[key])
           for key, (_, convert) in self._converters.items()}
    return _obs(reward, first, last, terminal, **obs)


def from_gym(env, obs_key=None, seed=None, time_limit=0, size=None):
  """Any gymnasium env as an interface env, as the original's `api` does.

  Discrete actions become one-hot, Box actions are normalised to [-1, 1];
  with `size`, images of another size are resized to it (nearest neighbour,
  as the original).
  """
  env = GymWrapper(env, obs_key=obs_key, seed=seed)
  if size:
    resized = ResizeImage(env, size, nearest=True)
    env = resized if resized.keys else env
  if isinstance(env.act_space['action'], gymnasium.spaces.Discrete):
    env = OneHotAction(env)
  else:
    env = NormalizeAction(env)
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
          f'NormalizeAction needs a Box action, got {space}.')
    self._env = env
    self._key = key
    self._mask = np.isfinite(space.low) & np.isfinite(space.high)
    self._low = np.where(self._mask, space.low, -1).astype(np.float32)
    self._high = np.where(self._mask, space.high, 1).astype(np.float32)
    low = np.where(self._mask, -1, space.low).astype(np.float32)
    high = np.where(self._mask, 1, space.high).astype(np.float32)
    self._space = gymnasium.spaces.Box(low, high, space.shape, np.float32)

  def __getattr__(self, name):
    return getattr(self._env, name)

  @property
  def act_space(self):
    return {**self._env.act_space, self._key: self._space}

  def step(self, action):
    normed = np.asarray(action[self._key], np.float32)
    orig = (normed + 1) / 2 * (self._high - self._low) + self._low
    orig = np.where(self._mask, orig, normed)
    return self._env.step({**action, self._key: orig})


class OneHotAction:
  """Let the agent choose a discrete action as a one-hot vector."""

  def __init__(self, env, key='action'):
    space = env.act_space[key]
    if not isinstance(space, gymnasium.spaces.Discrete):
      raise UnsupportedSpace(
          f'OneHotAction needs a Discrete action, got {space}.')
    self._env = env
    self._key = key
    self._space = OneHotBox(int(space.n))

  def __getattr__(self, name):
    return getattr(self._env, name)

  @property
  def act_space(self):
    return {**self._env.act_space, self._key: self._space}

  def step(self, action):
    vector = np.asarray(action[self._key])
    index = int(np.argmax(vector)) if vector.shape == (self._space.n,) else 0
    reference = np.zeros(self._space.n, np.float32)
    reference[index] = 1
    # Tolerate the rounding of straight-through samples in low precision;
    # NaN fails the comparison too.
    if vector.shape != reference.shape or not (
        np.abs(vector - reference).max() <= 1e-2):
      raise ValueError(
          f"Action '{self._key}' must be a one-hot vector of shape "
          f"({self._space.n},), got {vector.tolist()} (shape {vector.shape}).")
    return self._env.step({**action, self._key: index})


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
    grayscale=True, camera=-1, seed=None, outdir=None):
  """The interface env for a task name such as 'atari_pong'.

  mode is 'train' or 'eval'; both use the same protocol (Atari keeps sticky
  actions in eval), except that Crafter evaluates with its reward also for
  crafter_noreward, as the original does. time_limit counts agent steps
  (0 = the env's own). outdir is where Crafter writes its stats (train mode
  only).
  """
  if mode not in ('train', 'eval'):
    raise ValueError(f"Unknown mode '{mode}': use 'train' or 'eval'.")
  suite, name = _split_task(task)
  if suite == 'atari':
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


class Parallel:
  """Run an env in this thread ('none'), a thread, or a process.

  `ctor` builds the env and must pickle for 'process' (e.g.
  functools.partial(make, 'atari_pong', ...)). With blocking=False, reset
  and step return a callable that waits for the result, so that the driver
  can step several envs at once. Errors in the env are raised here, with the
  env's traceback attached as a note. A process receives actions and returns
  observations as raw bytes laid out by the spaces (`_Packing`); anything else
  travels pickled.
  """

  def __init__(self, ctor, strategy='process', name='env'):
    if strategy not in PARALLEL:
      raise ValueError(
          f"Unknown parallel strategy '{strategy}': use none, thread or "
          'process.')
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

  Pickling an observation and an action costs about 130 us per step round
  trip on these machines, a third of an Atari step (bench/README.md). pack
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

  The driver's next step usually comes within this time; a process that
  slept waits ~40-250 us to be woken on these 2-core VMs, and two Atari env
  processes stepped 1.2-1.37x faster polling than sleeping
  (bench/README.md). sched_yield hands the core to the parent when it waits
  for one.
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
