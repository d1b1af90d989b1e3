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
vectors), a 1-D Box (normalised to [-1, 1] where the bounds are finite),
MultiDiscrete (one one-hot head per dimension) or a Dict of those (one head
per part; the env gets its dict back). Other spaces raise
envs.UnsupportedSpace before anything runs.

`train` runs the loop of dreamerv2/loop.py: random prefill, then act, store
and learn, writing metrics.jsonl, TensorBoard events, the episodes and the
checkpoint to config.logdir, from which a second call resumes. Ctrl-C (in
the main thread) stops after the current step and saves the checkpoint.
train() closes the envs when it returns.

Two forms. `train(env, config)` with a gymnasium env steps that one env as
given: `action_repeat` only scales the logged step, `time_limit` (agent
steps, 0 = the env's own) ends episodes, `envs` and `envs_parallel` are not
used, and with an `eval_env` every `eval_every` steps `eval_eps` episodes run
with the eval policy. `train(make_env, config)` with a function of no
arguments that returns a new gymnasium env builds the envs as train.py does
for a task: `envs` train envs and min(envs, eval_eps) eval envs (seeded
apart), in `envs_parallel` (with 'process' the function travels to the
child with cloudpickle, so a lambda works), each with `action_repeat`
(summed rewards, the last observation) and `time_limit`; the spaces are
checked on one env made and closed before anything is written. An
`eval_env` given with a function replaces the eval envs: it runs in this
process, with the same `action_repeat` and `time_limit`.
"""

import collections.abc
import functools
import pickle

import gymnasium
import numpy as np

from common import config as config_lib
from common import envs as envs_lib
from common import rundir
from dreamerv2 import build
from dreamerv2 import loop


def defaults():
  """The default Config (the `defaults` block of configs.yaml)."""
  return config_lib.Config(config_lib.load_configs()['defaults'])


def train(env, config, outputs=None, eval_env=None):
  """Trains on a gymnasium env, or on the envs a function of no arguments
  makes (see the module docstring), until config.steps agent steps.

  config: a Config (e.g. `defaults().update({...})`) or a mapping of keys
  that update the defaults; config.logdir is required. outputs: the
  logger's outputs (default: common.logger TerminalOutput, JSONLOutput and
  TensorBoardOutput). eval_env: an optional second gymnasium env for
  evaluation. Raises envs.UnsupportedSpace for spaces the agent cannot use
  and config.ConfigError for values that cannot work (a bad choice, an
  unwritable logdir, a checkpoint of other model sizes).
  """
  if not isinstance(config, config_lib.Config):
    if not isinstance(config, collections.abc.Mapping):
      raise TypeError(
          f'config must be a Config or a mapping, got {type(config).__name__}')
    config = defaults().update(config)
  if not isinstance(env, gymnasium.Env) and callable(env):
    build.check_config(config)
    _check_factory(env, config)
    eval_envs = None
    if eval_env is not None:
      eval_envs = [_gym_env(eval_env, config, config.seed + build.EVAL_SEED)]
    rundir.prepare(config.logdir)
    loop.run(config, functools.partial(_factory_envs, env, config, eval_envs),
             outputs, envs_of_task=False)
    return
  size = tuple(config.render_size)
  train_env = envs_lib.from_gym(
      env, seed=config.seed, time_limit=config.time_limit, size=size)
  eval_envs = []
  if eval_env is not None:
    eval_envs.append(envs_lib.from_gym(
        eval_env, seed=config.seed + build.EVAL_SEED,
        time_limit=config.time_limit,
        size=size))
  resized = resized_images(env, train_env)
  if resized:
    print(f'Images resized to {size[0]}x{size[1]} (nearest neighbour, as the '
          f'original api): {resized}')
  build.check_config(config)
  rundir.prepare(config.logdir)
  loop.run(config, lambda: ([train_env], eval_envs), outputs,
           envs_of_task=False)


def _check_factory(make_env, config):
  """UnsupportedSpace for spaces the agent cannot use, from one env of
  `make_env` built where the train envs run (config.envs_parallel) and
  closed, so that nothing is written and TensorFlow is not loaded."""
  ctor = _Portable(make_env) if config.envs_parallel == 'process' else make_env
  envs_lib.Parallel(
      functools.partial(_made_env, ctor, config, config.seed),
      config.envs_parallel, name='the first env').close()


def _factory_envs(make_env, config, eval_envs=None):
  """(train envs, eval envs) made by `make_env`, as build.make_task_envs
  makes a task's; `eval_envs` replace the eval envs if given."""
  ctor = _Portable(make_env) if config.envs_parallel == 'process' else make_env
  def envs(count, offset, mode):
    return [envs_lib.Parallel(
        functools.partial(_made_env, ctor, config, config.seed + offset + i),
        config.envs_parallel, name=f'{mode} env {i}') for i in range(count)]
  train_envs = envs(config.envs, 0, 'train')
  if eval_envs is not None:
    return train_envs, eval_envs
  return train_envs, envs(
      min(config.envs, config.eval_eps), build.EVAL_SEED, 'eval')


def _made_env(make_env, config, seed):
  return _gym_env(make_env(), config, seed)


def _gym_env(gym_env, config, seed):
  """The interface env of a gym env with the run's action repeat, time limit
  and image size."""
  env = envs_lib.from_gym(gym_env, seed=seed, size=tuple(config.render_size))
  if config.action_repeat != 1:
    env = envs_lib.ActionRepeat(env, config.action_repeat)
  if config.time_limit:
    env = envs_lib.TimeLimit(env, config.time_limit)
  return env


class _Portable:
  """A function pickled with cloudpickle, so that lambdas and closures
  travel to an env process."""

  def __init__(self, function):
    import cloudpickle
    self._data = cloudpickle.dumps(function)

  def __call__(self):
    return pickle.loads(self._data)()


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
  Raises config.ConfigError for a logdir without config or checkpoint, or a
  checkpoint that does not fit the run's model.
  """
  config, spaces = rundir.load(logdir)
  path = rundir.find_checkpoint(logdir, checkpoint)
  if spaces is None:  # A run from before spaces.pkl: its task tells them.
    obs_space, act_space = build.task_spaces(config)
    spaces = {'obs_space': obs_space, 'act_space': act_space, 'task': True}
  import tensorflow as tf
  if seed is not None:
    tf.random.set_seed(seed)
  agent = build.agent(config, spaces['obs_space'], spaces['act_space']).agent
  step = rundir.load_weights(agent, path)
  return LoadedAgent(agent, config, spaces, path, step)


class LoadedAgent:
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
  spaces. seed: default `load_seed(config)`; task: another task with the
  same spaces."""
  config = logdir_or_config
  if not isinstance(config, config_lib.Config):
    config, _ = rundir.load(config)
  if task:
    config = config.update({'task': task})
  seed = load_seed(config, seed)
  strategy, _ = envs_lib.where_to_run(config.task, 'none')
  return envs_lib.Parallel(
      functools.partial(build.make_env, config, mode, seed), strategy)


def load_seed(config, seed=None):
  """The seed of a loaded run's envs (api.make_env, eval.py): `seed`, or the
  run's seed + build.LOAD_SEED, which neither its train nor eval envs use."""
  return config.seed + build.LOAD_SEED if seed is None else seed


def resized_images(gym_env, env):
  """'image 96x96' for each image of the gym env that `env` resizes."""
  before = envs_lib.GymWrapper(gym_env).obs_space
  after = env.obs_space
  return ', '.join(
      f'{key} {before[key].shape[0]}x{before[key].shape[1]}'
      for key in after
      if key in before and before[key].shape != after[key].shape)
