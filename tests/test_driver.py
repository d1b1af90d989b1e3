"""The driver: policy in, transitions and whole episodes out."""

import functools

import numpy as np
import pytest

from common import driver as driver_lib
from common import envs


class CountingEnv:
  """Episodes of `length` steps; the image shows the step, reward = action."""

  def __init__(self, length, actions=3):
    self.length = length
    self.obs_space = {
        'image': envs._image_space((4, 4, 1)), **envs._base_spaces()}
    self.act_space = {'action': envs.OneHotBox(actions)}
    self.resets = 0

  def reset(self):
    self.resets += 1
    self.count = 0
    return envs._obs(0.0, True, False, False, image=self._image())

  def step(self, action):
    self.count += 1
    done = self.count == self.length
    reward = float(np.argmax(action['action']))
    return envs._obs(reward, False, done, done, image=self._image())

  def _image(self):
    return np.full((4, 4, 1), self.count, np.uint8)


class Policy:
  """Chooses action (call number % 3) in every env; state counts the calls."""

  def __init__(self):
    self.states = []
    self.obs = []

  def __call__(self, obs, state):
    self.states.append(state)
    self.obs.append(obs)
    calls = 1 if state is None else state + 1
    batch = len(obs['is_first'])
    action = np.zeros((batch, 3), np.float64)  # Driver stores float32.
    action[:, calls % 3] = 1
    return {'action': action, 'ignored': 'not an action'}, calls


def test_episodes_have_length_plus_one_and_start_with_a_zero_action():
  env_list = [CountingEnv(3), CountingEnv(5)]
  driver = driver_lib.Driver(env_list)
  episodes = []
  driver.on_episode(lambda ep, worker: episodes.append((worker, ep)))
  driver(Policy(), episodes=3)
  assert [(w, len(ep['reward'])) for w, ep in episodes] == [
      (0, 4), (1, 6), (0, 4)]
  worker, ep = episodes[1]
  assert ep['image'].dtype == np.uint8 and ep['image'].shape == (6, 4, 4, 1)
  assert ep['action'].dtype == np.float32 and ep['action'].shape == (6, 3)
  assert ep['reward'].dtype == np.float32
  assert ep['is_first'].dtype == bool and ep['is_last'].dtype == bool
  assert (ep['action'][0] == 0).all()
  assert ep['image'][:, 0, 0, 0].tolist() == [0, 1, 2, 3, 4, 5]
  # The action stored with obs t is the one that led to it: calls 1..5.
  assert np.argmax(ep['action'][1:], -1).tolist() == [1, 2, 0, 1, 2]
  assert ep['reward'].tolist() == [0, 1, 2, 0, 1, 2]
  assert ep['is_first'].tolist() == [True] + [False] * 5
  assert ep['is_last'].tolist() == [False] * 5 + [True]
  assert ep['is_terminal'][-1]


def test_steps_count_over_all_envs_and_resets_are_separate():
  driver = driver_lib.Driver([CountingEnv(4), CountingEnv(4)])
  steps, resets = [], []
  driver.on_step(lambda tran, worker: steps.append(worker))
  driver.on_reset(lambda tran, worker: resets.append((worker, tran)))
  driver(Policy(), steps=10)
  assert steps == [0, 1] * 5
  assert [w for w, _ in resets] == [0, 1, 0, 1]  # Both envs ended at step 4.
  tran = resets[0][1]
  assert tran['is_first'] and (tran['action'] == 0).all()
  assert tran['action'].dtype == np.float32


def test_policy_state_is_passed_back_and_episodes_continue_across_calls():
  env_list = [CountingEnv(5), CountingEnv(2)]
  driver = driver_lib.Driver(env_list)
  episodes = []
  driver.on_episode(
      lambda ep, worker: episodes.append((worker, len(ep['reward']))))
  policy = Policy()
  driver(policy, steps=2)
  driver(policy, steps=6)
  assert policy.states == [None, 1, 2, 3]
  assert episodes == [(1, 3), (1, 3)]
  driver(policy, episodes=1)
  assert episodes[2] == (0, 6)  # Started in the first call, not restarted.
  assert [env.resets for env in env_list] == [1, 3]
  # The policy sees the reset observation of an env whose episode ended.
  assert policy.obs[0]['is_first'].tolist() == [True, True]
  assert policy.obs[2]['is_first'].tolist() == [False, True]
  assert policy.obs[2]['image'].shape == (2, 4, 4, 1)
  driver.reset()
  driver(policy, steps=1)
  assert policy.states[-1] is None
  assert [env.resets for env in env_list] == [2, 4]


class ArrayLike:
  """Stands in for a TensorFlow tensor: converts with np.asarray."""

  def __init__(self, value):
    self.value = value

  def __array__(self, dtype=None, copy=None):
    return np.asarray(self.value, dtype)


def test_policy_outputs_are_converted_with_asarray():
  driver = driver_lib.Driver([CountingEnv(2)])
  episodes = []
  driver.on_episode(lambda ep, worker: episodes.append(ep))
  policy = lambda obs, state: (
      {'action': ArrayLike(np.eye(3, dtype=np.float16)[[2]])}, state)
  driver(policy, episodes=1)
  assert episodes[0]['action'].dtype == np.float32
  assert episodes[0]['reward'].tolist() == [0, 2, 2]
  # The agent's mixed-precision dtype on CPU (ml_dtypes comes with TensorFlow).
  from ml_dtypes import bfloat16
  policy = lambda obs, state: (
      {'action': np.eye(3, dtype=bfloat16)[[1]]}, state)
  driver(policy, episodes=1)
  assert episodes[1]['action'].dtype == np.float32


@pytest.mark.parametrize('strategy', ['thread', 'process'])
def test_driver_runs_parallel_atari_envs_with_a_time_limit(strategy):
  ctor = functools.partial(
      envs.make, 'atari_pong', action_repeat=4, time_limit=20, seed=0)
  env_list = [envs.Parallel(ctor, strategy) for _ in range(2)]
  driver = driver_lib.Driver(env_list)
  episodes = []
  driver.on_episode(lambda ep, worker: episodes.append((worker, ep)))
  rng = np.random.default_rng(0)

  def random_policy(obs, state):
    actions = np.eye(18, dtype=np.float32)[
        rng.integers(0, 18, len(obs['image']))]
    return {'action': actions}, state

  driver(random_policy, episodes=2)
  for env in env_list:
    env.close()
  assert sorted(worker for worker, _ in episodes) == [0, 1]
  for _, ep in episodes:
    assert (ep['image'].shape == (21, 64, 64, 1)
            and ep['image'].dtype == np.uint8)
    assert ep['action'].shape == (21, 18) and (ep['action'][0] == 0).all()
    assert (ep['action'][1:].sum(-1) == 1).all()
    assert ep['is_last'][-1] and not ep['is_terminal'].any()
