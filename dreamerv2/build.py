"""A run's parts from its config: the checks that run before TensorFlow
loads, the task's envs, the agent, the random policy, the outputs.

Seeds: the train envs take config.seed + index, the eval envs and the random
eval policy config.seed + EVAL_SEED + index, and the envs of eval.py and
api.make_env config.seed + LOAD_SEED, so that no two kinds share episodes.
"""

import contextlib
import functools
import os
import pathlib
import subprocess
import sys

import numpy as np

from common import choices
from common import envs as envs_lib
from common import errors
from common import logger as logger_lib
from common import utils
from common.config import ConfigError
from dreamerv2 import distribute

EVAL_SEED = 1000
LOAD_SEED = 2000


def check_config(config):
  """ConfigError (or choices.BadChoice) for a value that would only fail
  later; no TensorFlow here."""
  choices.check_all(config.flat)
  distribute.check_config(config)
  logger_lib.check_outputs(config.log.outputs)
  if config.warm_start.checkpoint:
    path = pathlib.Path(config.warm_start.checkpoint).expanduser()
    if not path.is_file():
      raise ConfigError(f'warm_start.checkpoint {path} is not a file')
  if config.checkpoints.keep < 0:
    raise ConfigError(
        f'checkpoints.keep must be 0 (no snapshots) or more, got '
        f'{config.checkpoints.keep}')
  for key in ('envs', 'eval_every', 'steps'):
    if config[key] < 1:
      raise ConfigError(f'{key} must be at least 1, got {config[key]}')


def make_task_envs(config, modes=('train', 'eval'), seed=None):
  """(train envs, eval envs) of config.task, each in envs.Parallel:
  config.envs train envs and min(envs, eval_eps) eval envs. `modes` limits
  which are built; `seed` replaces config.seed."""
  seed = config.seed if seed is None else seed
  counts = {'train': config.envs, 'eval': min(config.envs, config.eval_eps)}
  offsets = {'train': 0, 'eval': EVAL_SEED}
  built = {mode: [] for mode in ('train', 'eval')}
  for mode in modes:
    for index in range(counts[mode]):
      built[mode].append(envs_lib.Parallel(
          functools.partial(make_env, config, mode,
                            seed + offsets[mode] + index),
          config.envs_parallel, name=f'{config.task} {mode} env {index}'))
  return built['train'], built['eval']


def make_env(config, mode, seed):
  """One env of config.task with the run's settings (action repeat, time
  limit, size, grayscale, camera)."""
  logdir = pathlib.Path(config.logdir).expanduser()
  return envs_lib.make(
      config.task, mode, action_repeat=config.action_repeat,
      time_limit=config.time_limit, size=tuple(config.render_size),
      grayscale=config.atari_grayscale, camera=config.dmc_camera, seed=seed,
      outdir=logdir / 'crafter', gym_kwargs=config.gym_kwargs)


def task_spaces(config):
  """(obs_space, act_space) of config.task, from one env built and closed
  (a DMC env in a process of its own, as every DMC env)."""
  strategy, _ = envs_lib.where_to_run(config.task, 'none')
  env = envs_lib.Parallel(
      functools.partial(make_env, config, 'train', config.seed), strategy)
  try:
    return env.obs_space, env.act_space
  finally:
    env.close()


def agent(config, obs_space, act_space, strategy=None):
  """The agent of `config` for these spaces, in a distribute.Learner that
  runs its update (on `strategy`'s replicas, if given); ConfigError if the
  config cannot build it."""
  from dreamerv2 import agent as agent_lib
  try:
    return distribute.Learner(
        lambda: agent_lib.Agent(config, obs_space, act_space), strategy)
  except ValueError as e:
    raise ConfigError(f'cannot build the agent from this config: {e}') from None


# The replay holds its episodes as arrays: 1.03 times their raw bytes
# (bench/replay_memory.py measured it).
REPLAY_OVERHEAD = 1.03
# The eval replay holds replay.capacity // EVAL_REPLAY_DIVISOR steps.
EVAL_REPLAY_DIVISOR = 100


def available_memory(root='/'):
  """Bytes of memory available to a new allocation, or None where the system
  does not say: Linux's MemAvailable, or less when the process's cgroup (a
  container's or a cluster job's memory limit, v2 or v1) leaves less."""
  root = pathlib.Path(root)
  found = []
  try:
    for line in (root / 'proc/meminfo').read_text().splitlines():
      if line.startswith('MemAvailable:'):
        found.append(int(line.split()[1]) * 1024)
  except (OSError, ValueError, IndexError):
    pass
  cgroup = root / 'sys/fs/cgroup'
  for limit, usage in (('memory.max', 'memory.current'),
                       ('memory/memory.limit_in_bytes',
                        'memory/memory.usage_in_bytes')):
    try:
      limit = (cgroup / limit).read_text().strip()
      if limit != 'max' and int(limit) < 2 ** 60:  # v1 says "none" so.
        found.append(max(0, int(limit) - int((cgroup / usage).read_text())))
      break
    except (OSError, ValueError):
      continue
  return min(found) if found else None


def replay_memory_warning(obs_space, act_space, capacity, available=None):
  """One warning line when the replays of `capacity` train steps (and the
  eval replay's share) of these spaces would not fit in the
  available memory, else None."""
  available = available_memory() if available is None else available
  spaces = {**obs_space, **act_space}
  step = REPLAY_OVERHEAD * sum(
      int(np.prod(space.shape)) * np.dtype(space.dtype).itemsize
      for space in spaces.values())
  total = capacity + capacity // EVAL_REPLAY_DIVISOR
  if not available or total * step <= available:
    return None
  fits = int(available // (step * (1 + 1 / EVAL_REPLAY_DIVISOR)))
  return (f'Warning: at replay.capacity {int(capacity)} steps the replays '
          f'grow to {utils.format_bytes(total * step)} '
          f'({utils.format_bytes(step)} a step), more than the '
          f'{utils.format_bytes(available)} of memory available: lower '
          f'--replay.capacity (about {fits} steps fit).')


def outputs(config, logdir):
  """The logger's outputs of config.log.outputs (common/logger.py)."""
  # The replay's counts go to the files only; the progress line stays short.
  hide_counts = r'^(?!(train|eval)_(total|loaded)_(steps|episodes)$)'
  return logger_lib.make_outputs(
      config.log.outputs, logdir, config,
      config.steps * config.action_repeat, hide_counts,
      {'wandb': {'project': config.log.project},
       'mlflow': {'experiment': config.log.project}})


def random_policy(space, seed):
  """Uniform random actions: one-hot for discrete spaces, else in [-1, 1];
  so per part for an action of several (envs.ActionParts)."""
  rng = np.random.default_rng(seed)
  parts = getattr(space, 'parts', None)
  if not parts:  # One part: the same draws as before parts existed.
    kind = 'discrete' if getattr(space, 'discrete', False) else 'continuous'
    parts = [('action', kind, space.shape[0])]
  def draw(kind, size, batch):
    if kind == 'discrete':
      return np.eye(size, dtype=np.float32)[rng.integers(size, size=batch)]
    return rng.uniform(-1, 1, (batch, size)).astype(np.float32)
  def policy(obs, state):
    batch = len(obs['is_first'])
    action = np.concatenate(
        [draw(kind, size, batch) for _, kind, size in parts], -1)
    return {'action': action}, None
  return policy


def describe_compute(config):
  """Prints the precision and device the agent computes in, and a warning
  when a GPU is listed that TensorFlow cannot use."""
  import tensorflow as tf
  from common import nets
  dtype = nets.dtype_for(config.precision)  # The agent's own; nothing global.
  device = 'GPU' if tf.config.list_physical_devices('GPU') else 'CPU'
  scaling = ' with loss scaling' if dtype == tf.float16 else ''
  print(f'Precision {config.precision}: {dtype.name} on {device}{scaling} · '
        f'tf.function {"on" if config.jit else "off"}'
        f'{" · XLA" if config.xla else ""}')
  for warning in (gpu_warning(device), bfloat16_warning(dtype.name, device)):
    if warning:
      print(warning, file=sys.stderr)


def cpu_has_bfloat16(cpuinfo='/proc/cpuinfo'):
  """Whether the CPU has bfloat16 instructions (AVX512-BF16 or AMX), or None
  where /proc/cpuinfo does not tell (not Linux)."""
  try:
    flags = set(pathlib.Path(cpuinfo).read_text().split())
  except OSError:
    return None
  return bool(flags & {'avx512_bf16', 'amx_bf16'})


def bfloat16_warning(dtype, device, cpuinfo='/proc/cpuinfo'):
  """A warning when the agent computes in bfloat16 on a CPU that has no
  bfloat16 instructions (AVX512-BF16 or AMX): TensorFlow then emulates them,
  many times slower than float32."""
  if dtype != 'bfloat16' or device != 'CPU' or cpu_has_bfloat16(cpuinfo) in (
      True, None):
    return None
  return ('Warning: precision 16 computes in bfloat16, which this CPU lacks '
          '(no AVX512-BF16 or AMX flag in /proc/cpuinfo): TensorFlow emulates '
          'it, many times slower than float32. Train with --precision 32.')


def gpu_warning(device):
  """A warning when nvidia-smi lists a GPU but TensorFlow runs on the CPU."""
  if device == 'GPU':
    return None
  try:
    listed = subprocess.run(['nvidia-smi', '-L'], capture_output=True,
                            text=True, timeout=10).stdout
  except (OSError, subprocess.SubprocessError):
    return None
  gpus = [line for line in listed.splitlines() if line.startswith('GPU')]
  if not gpus:
    return None
  import tensorflow as tf
  return (f'Warning: nvidia-smi lists {len(gpus)} GPU(s) ({gpus[0]}), but '
          f'TensorFlow sees none and runs on the CPU: install its CUDA build, '
          f'pip install "tensorflow[and-cuda]=={tf.__version__}" (make venv '
          f'does on such machines).')


@contextlib.contextmanager
def mujoco_rendering_off():
  """Checking a DMC task name imports dm_control; without a renderer, so that
  this process never loads EGL (the env processes render)."""
  previous = os.environ.get('MUJOCO_GL')
  os.environ['MUJOCO_GL'] = 'disable'
  try:
    yield
  finally:
    if previous is None:
      del os.environ['MUJOCO_GL']
    else:
      os.environ['MUJOCO_GL'] = previous


class EnvFailed(errors.RunEnded):
  """An env's error or death, after the run was saved: one line for users."""

  hint = 'The run is saved; run the same command to resume.'

  def __init__(self, error):
    self.error = error
    self.details = ''.join(getattr(error, '__notes__', []))
    name = getattr(error, 'env', None)
    text = (str(error) if name is None
            else f'{name} failed: {type(error).__name__}: {error}')
    super().__init__(text)
