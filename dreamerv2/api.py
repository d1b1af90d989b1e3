"""Train DreamerV2 on any gymnasium env from Python.

  import gymnasium
  from dreamerv2 import api

  config = api.defaults().update({
      'logdir': '~/logdir/cartpole/dreamerv2/1',
      'steps': 1e5, 'prefill': 1000, 'time_limit': 500,
      'replay.minlen': 10, 'replay.maxlen': 50,
  })
  api.train(gymnasium.make('CartPole-v1'), config)

`defaults()` is the `defaults` block of configs.yaml; `update` takes the keys
that flags take (`'rssm.deter': 600`) or a whole named block
(`common.config.load_configs()['minigrid']`). Run from the repository root (or
put it on sys.path) so that `common` and `dreamerv2` import.

Supported spaces: observations that are a uint8 Box [H, W, C] or [H, W]
(images, resized to `render_size`, 64x64, by nearest neighbour as the
original api does, and said so when it starts), a Box with 0 or 1 dimensions
(vectors), or a Dict of those; actions Discrete (the agent picks one-hot
vectors) or a 1-D Box (normalised to [-1, 1] where the bounds are finite).
Other spaces raise envs.UnsupportedSpace before anything runs.

`train` runs the loop of dreamerv2/train.py: random prefill, then act, store
and learn, writing metrics.jsonl, TensorBoard events, the episodes and the
checkpoint to config.logdir, from which a second call resumes. The env is
stepped as given: `action_repeat` only scales the logged step, `time_limit`
(agent steps, 0 = the env's own) ends episodes, and `envs` and
`envs_parallel` are not used. With an `eval_env`, every `eval_every` steps
`eval_eps` episodes run with the eval policy. Ctrl-C (in the main thread)
stops after the current step and saves the checkpoint. train() closes the
envs when it returns.
"""

import collections.abc
import functools

import numpy as np

from common import config as config_lib
from common import envs as envs_lib
from dreamerv2 import train as train_lib


def defaults():
  """The default Config (the `defaults` block of configs.yaml)."""
  return config_lib.Config(config_lib.load_configs()['defaults'])


def train(env, config, outputs=None, eval_env=None):
  """Trains on a gymnasium env until config.steps agent steps.

  config: a Config (e.g. `defaults().update({...})`) or a mapping of keys
  that update the defaults; config.logdir is required. outputs: the
  logger's outputs (default: common.logger TerminalOutput, JSONLOutput and
  TensorBoardOutput). eval_env: an optional second gymnasium env for
  evaluation. Raises envs.UnsupportedSpace for spaces the agent cannot use
  and train.ConfigError for values that cannot work (a bad choice, an
  unwritable logdir, a checkpoint of other model sizes).
  """
  if not isinstance(config, config_lib.Config):
    if not isinstance(config, collections.abc.Mapping):
      raise TypeError(
          f'config must be a Config or a mapping, got {type(config).__name__}')
    config = defaults().update(config)
  size = tuple(config.render_size)
  train_env = envs_lib.from_gym(
      env, seed=config.seed, time_limit=config.time_limit, size=size)
  eval_envs = []
  if eval_env is not None:
    eval_envs.append(envs_lib.from_gym(
        eval_env, seed=config.seed + 1000, time_limit=config.time_limit,
        size=size))
  resized = resized_images(env, train_env)
  if resized:
    print(f'Images resized to {size[0]}x{size[1]} (nearest neighbour, as the '
          f'original api): {resized}')
  train_lib.check_config(config)
  train_lib.prepare_logdir(config.logdir)
  train_lib.run(config, lambda: ([train_env], eval_envs), outputs, task=False)


def load(logdir, checkpoint=None, seed=None):
  """A trained agent from a run's logdir, ready to act:

    agent = api.load('~/logdir/atari_pong/dreamerv2/1')
    env = api.make_env('~/logdir/atari_pong/dreamerv2/1')
    obs, state = env.reset(), None
    while not obs['is_last']:
      action, state = agent.policy(obs, state)   # mode='eval': the actor's mode
      obs = env.step(action)

  checkpoint: a file (default: the run's newest, variables.pkl). seed: seeds
  TensorFlow's random ops (the latent samples), for repeatable episodes.
  Raises train.ConfigError for a logdir without config or checkpoint, or a
  checkpoint that does not fit the run's model.
  """
  config, spaces = train_lib.load_run(logdir)
  path = train_lib.find_checkpoint(logdir, checkpoint)
  step = train_lib.checkpoint_step(path)
  if spaces is None:  # A run from before spaces.pkl: its task tells them.
    env = make_env(config)
    spaces = {'obs_space': env.obs_space, 'act_space': env.act_space,
              'task': True}
    env.close()
  import tensorflow as tf
  from common import tfutils
  if seed is not None:
    tf.random.set_seed(seed)
  agent = train_lib.build_agent(
      config, spaces['obs_space'], spaces['act_space'])
  try:
    tfutils.load_checkpoint(agent, path)
  except (tfutils.CheckpointMismatch, tfutils.CheckpointUnreadable) as e:
    raise train_lib.ConfigError(str(e)) from None
  return Trained(agent, config, spaces, path, step)


class Trained:
  """A loaded agent: `policy` acts on the run's observations; `config`,
  `checkpoint`, `step` (agent steps) and `frames` say what was loaded."""

  def __init__(self, agent, config, spaces, checkpoint, step):
    self.agent, self.config, self.checkpoint = agent, config, checkpoint
    self.obs_space, self.act_space = spaces['obs_space'], spaces['act_space']
    self.step, self.frames = step, step * config.action_repeat

  def policy(self, obs, state=None, mode='eval'):
    """obs: one observation of the env (as env.step returns it), or a batch
    of them stacked [N, ...]. mode: 'eval' (the actor's mode), 'train'
    (samples) or 'explore'. Returns ({'action': array}, state): pass state
    back at the next step (None starts an episode)."""
    single = np.ndim(obs['is_first']) == 0
    if single:
      obs = {key: np.asarray(value)[None] for key, value in obs.items()}
    outputs, state = self.agent.policy(obs, state, mode)
    action = np.asarray(outputs['action'])
    return {'action': action[0] if single else action}, state


def make_env(logdir_or_config, mode='eval', seed=None, task=None):
  """An env of a run's task with the run's settings (action repeat, time
  limit, size, sticky actions, camera), from its logdir or Config. DMC envs
  run in a child process (MuJoCo's renderer beside TensorFlow crashes a
  process); either way the env has reset(), step(action), close() and its
  spaces. seed: default the run's seed + 2000 (neither train nor eval envs');
  task: another task with the same spaces."""
  config = logdir_or_config
  if not isinstance(config, config_lib.Config):
    config, _ = train_lib.load_run(config)
  if task:
    config = config.update({'task': task})
  seed = config.seed + 2000 if seed is None else seed
  strategy = 'process' if config.task.startswith('dmc_') else 'none'
  return envs_lib.Parallel(
      functools.partial(train_lib.make_env, config, mode, seed), strategy)


def resized_images(gym_env, env):
  """'image 96x96' for each image of the gym env that `env` resizes."""
  before = envs_lib.GymWrapper(gym_env).obs_space
  after = env.obs_space
  return ', '.join(
      f'{key} {before[key].shape[0]}x{before[key].shape[1]}'
      for key in after
      if key in before and before[key].shape != after[key].shape)
