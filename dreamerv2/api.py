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
  train_lib.run(config, lambda: ([train_env], eval_envs), outputs)


def resized_images(gym_env, env):
  """'image 96x96' for each image of the gym env that `env` resizes."""
  before = envs_lib.GymWrapper(gym_env).obs_space
  after = env.obs_space
  return ', '.join(
      f'{key} {before[key].shape[0]}x{before[key].shape[1]}'
      for key in after if key in before and before[key].shape != after[key].shape)
