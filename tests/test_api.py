"""dreamerv2/api.py: training on any gymnasium env from Python."""

import json

import gymnasium
import numpy as np
import pytest

from common import config as config_lib
from common import envs
from dreamerv2 import api

TINY = {
    'jit': True, 'precision': 32, 'steps': 150, 'prefill': 100,
    'time_limit': 50, 'train_every': 10, 'log_every': 50, 'eval_every': 100,
    'eval_eps': 1, 'replay.minlen': 4, 'replay.maxlen': 10,
    'dataset.batch': 4, 'dataset.length': 10,
    'rssm.deter': 32, 'rssm.hidden': 32, 'rssm.stoch': 4, 'rssm.discrete': 4,
    'encoder.cnn_depth': 4, 'decoder.cnn_depth': 4,
    'encoder.mlp_layers': [16], 'decoder.mlp_layers': [16],
    'reward_head.layers': 1, 'reward_head.units': 16,
    'discount_head.layers': 1, 'discount_head.units': 16,
    'actor.layers': 1, 'actor.units': 16, 'critic.layers': 1,
    'critic.units': 16, 'imag_horizon': 5}


class ImageEnv(gymnasium.Env):
  """64x64 RGB frames with a bright column at the step number; reward 1 when
  the action names the step number mod 3. Box actions: reward -|a - 0.5|.
  With `vector`, a Dict observation that also holds the step as a vector."""

  def __init__(self, box_actions=False, vector=False, length=20, size=64):
    self.size = size
    image = gymnasium.spaces.Box(0, 255, (size, size, 3), np.uint8)
    if vector:
      self.observation_space = gymnasium.spaces.Dict({
          'image': image,
          'position': gymnasium.spaces.Box(-np.inf, np.inf, (2,), np.float32)})
    else:
      self.observation_space = image
    if box_actions:
      self.action_space = gymnasium.spaces.Box(-2, 2, (2,), np.float32)
    else:
      self.action_space = gymnasium.spaces.Discrete(3)
    self.vector = vector
    self.length = length
    self.actions = []

  def reset(self, seed=None, options=None):
    super().reset(seed=seed)
    self.count = 0
    return self._obs(), {}

  def step(self, action):
    assert self.action_space.contains(action), action
    self.actions.append(action)
    if isinstance(self.action_space, gymnasium.spaces.Discrete):
      reward = float(action == self.count % 3)
    else:
      reward = -float(np.abs(action - 0.5).sum())
    self.count += 1
    return self._obs(), reward, False, self.count >= self.length, {}

  def _obs(self):
    image = np.zeros((self.size, self.size, 3), np.uint8)
    image[:, 3 * self.count % self.size] = 255
    if not self.vector:
      return image
    position = np.array([self.count, -self.count], np.float32)
    return {'image': image, 'position': position}


class Recorder:
  """A logger output that keeps every write: [(step, {name: value})]."""

  def __init__(self):
    self.writes = []

  def __call__(self, step, summaries):
    self.writes.append((step, dict(summaries)))

  def values(self):
    return {name: value for _, summary in self.writes
            for name, value in summary.items()}


def read_metrics(logdir):
  lines = (logdir / 'metrics.jsonl').read_text().splitlines()
  return {k: v for line in lines for k, v in json.loads(line).items()}


def test_defaults_are_the_defaults_block():
  assert api.defaults() == config_lib.parse([])
  config = api.defaults().update({'rssm.deter': 600})
  assert config.rssm.deter == 600 and api.defaults().rssm.deter == 1024


def test_cartpole_vector_observations_and_discrete_actions(tmp_path):
  logdir = tmp_path / 'cartpole'
  config = api.defaults().update({**TINY, 'logdir': str(logdir)})
  api.train(
      gymnasium.make('CartPole-v1'), config,
      eval_env=gymnasium.make('CartPole-v1'))
  metrics = read_metrics(logdir)
  for key in ('train_return', 'eval_return', 'model_loss', 'actor_loss',
              'critic_loss'):
    assert np.isfinite(metrics[key]), key
  assert 'vector_loss' in metrics  # The decoder reconstructs the observation.
  assert 'image_loss' not in metrics
  # Episodes after the 100 prefill steps were stored (unfinished ones are not).
  assert 100 < metrics['train_total_steps'] <= 150
  assert (logdir / 'variables.pkl').exists()
  assert (logdir / 'config.yaml').exists()


def test_an_env_factory_gives_several_envs_in_processes_with_action_repeat(
    tmp_path):
  logdir = tmp_path / 'cartpole'
  config = api.defaults().update({
      **TINY, 'logdir': str(logdir), 'envs': 2, 'envs_parallel': 'process',
      'action_repeat': 2})
  made = []
  # A lambda with a closure: it travels to the env processes (cloudpickle).
  api.train(lambda: made.append(1) or gymnasium.make('CartPole-v1'), config)
  assert made == []  # Every env was made in a process of its own.
  rows = [json.loads(line) for line in
          (logdir / 'metrics.jsonl').read_text().splitlines()]
  assert any('train_return' in row for row in rows)
  assert any('eval_return' in row for row in rows)  # Eval envs made too.
  # Two agent steps of the env per action: a train episode of CartPole
  # (at most 500 env steps) is at most 250 agent steps long, and the
  # logged step counts frames (agent steps x 2).
  lengths = [row['train_length'] for row in rows if 'train_length' in row]
  assert lengths and max(lengths) <= 50  # time_limit 50 agent steps.
  assert max(row['step'] for row in rows) in (300, 302)
  from common import rundir
  assert rundir.load(logdir)[1]['task'] is False  # Not config.task's envs.


def test_image_observations_and_discrete_actions(tmp_path):
  logdir = tmp_path / 'image'
  env = ImageEnv()
  recorder = Recorder()
  config = api.defaults().update({**TINY, 'logdir': str(logdir)})
  api.train(env, config, outputs=[recorder])
  values = recorder.values()
  assert np.isfinite(values['image_loss']) and np.isfinite(values['actor_loss'])
  assert values['train_policy_image'].shape == (21, 64, 64, 3)
  # Open loop: truth / model / error stacked in height, one column per sequence.
  assert values['train_openl_image'].shape == (10, 3 * 64, 4 * 64, 3)
  assert {step for step, _ in recorder.writes} >= {20, 40, 100}
  assert len(env.actions) >= 150
  assert not (logdir / 'metrics.jsonl').exists()  # Only the given outputs.


def test_images_of_another_size_are_resized_to_64x64(tmp_path, capsys):
  # As the original's api: nearest-neighbour resize to the configured size.
  env = ImageEnv(size=96)
  recorder = Recorder()
  config = api.defaults().update({**TINY, 'logdir': str(tmp_path / 'run')})
  api.train(env, config, outputs=[recorder])
  assert 'Images resized to 64x64 (nearest neighbour' in capsys.readouterr().out
  values = recorder.values()
  assert np.isfinite(values['image_loss'])
  assert values['train_policy_image'].shape == (21, 64, 64, 3)
  # Nearest neighbour keeps the column's full brightness (area averaging
  # would blur a 1-pixel column of a 96-pixel frame).
  assert set(np.unique(values['train_policy_image'])) <= {0, 255}


def test_dict_observations_and_box_actions(tmp_path):
  logdir = tmp_path / 'dict'
  env = ImageEnv(box_actions=True, vector=True)
  recorder = Recorder()
  config = api.defaults().update({**TINY, 'logdir': str(logdir)})
  api.train(env, config, outputs=[recorder])
  values = recorder.values()
  assert (np.isfinite(values['image_loss'])
          and np.isfinite(values['position_loss']))
  actions = np.array(env.actions)
  # The agent acts in [-1, 1]; the env gets actions scaled to its [-2, 2].
  assert len(actions) >= 150 and np.abs(actions).max() <= 2
  assert np.abs(actions).max() > 1


Box = gymnasium.spaces.Box


@pytest.mark.parametrize('observation, action', [
    # Float image.
    (Box(0, 1, (64, 64, 3), np.float32), gymnasium.spaces.Discrete(2)),
    (Box(0, 1, (3,), np.float32), gymnasium.spaces.Dict(
        {'a': gymnasium.spaces.Dict({'b': gymnasium.spaces.Discrete(2)})})),
])
def test_unsupported_spaces_are_rejected_before_anything_runs(
    tmp_path, observation, action):

  class Env(gymnasium.Env):
    observation_space = observation
    action_space = action

    def reset(self, seed=None, options=None):
      raise AssertionError('the env must not run')

  logdir = tmp_path / 'run'
  config = api.defaults().update({**TINY, 'logdir': str(logdir)})
  with pytest.raises(envs.UnsupportedSpace):
    api.train(Env(), config)
  assert not logdir.exists()
  # The class is a function of no arguments that makes the env: a factory.
  for parallel in ('none', 'process'):
    with pytest.raises(envs.UnsupportedSpace):
      api.train(Env, config.update({'envs_parallel': parallel}))
    assert not logdir.exists()


class EndlessEnv(gymnasium.Env):
  """Reward 1 per frame, no end of its own: an episode's return is the
  number of frames it lasted."""

  observation_space = gymnasium.spaces.Box(-1, 1, (2,), np.float32)
  action_space = gymnasium.spaces.Discrete(2)

  def reset(self, seed=None, options=None):
    super().reset(seed=seed)
    return np.zeros(2, np.float32), {}

  def step(self, action):
    return np.zeros(2, np.float32), 1.0, False, False, {}


def test_an_eval_env_given_with_a_factory_repeats_actions_as_train_envs(
    tmp_path):
  logdir = tmp_path / 'run'
  config = api.defaults().update({
      **TINY, 'logdir': str(logdir), 'action_repeat': 2, 'time_limit': 25})
  api.train(EndlessEnv, config, eval_env=EndlessEnv())
  # 25 agent steps of 2 frames each, in train and eval episodes alike.
  metrics = read_metrics(logdir)
  assert metrics['train_return'] == 50 and metrics['eval_return'] == 50
  assert metrics['train_length'] == metrics['eval_length'] == 25
