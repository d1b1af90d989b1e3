"""The env interface and the Atari protocol of DreamerV2 (paper, section 4)."""

import collections
import functools
import importlib.util
import pathlib
import pickle
import subprocess
import sys
import threading
import time

import gymnasium
import numpy as np
import pytest

from common import envs

FLAGS = ('is_first', 'is_last', 'is_terminal')


def onehot(index, n=18):
  action = np.zeros(n, np.float32)
  action[index] = 1
  return {'action': action}


def check_obs(obs, obs_space):
  assert set(obs) == set(obs_space)
  for key, space in obs_space.items():
    value = np.asarray(obs[key])
    assert value.shape == space.shape, key
    assert value.dtype == space.dtype, key


# Atari ---------------------------------------------------------------------


def test_atari_sees_64x64_grayscale_and_acts_with_18_one_hot_actions():
  env = envs.make('atari_pong', action_repeat=4, seed=0)
  assert env.obs_space['image'] == gymnasium.spaces.Box(
      0, 255, (64, 64, 1), np.uint8)
  space = env.act_space['action']
  assert isinstance(space, gymnasium.spaces.Box)
  assert space.shape == (18,) and space.dtype == np.float32 and space.discrete
  sample = space.sample()
  assert sample.sum() == 1 and set(np.unique(sample)) == {0, 1}
  obs = env.reset()
  check_obs(obs, env.obs_space)
  assert obs['is_first'] and not obs['is_last'] and obs['reward'] == 0
  assert obs['image'].std() > 0
  obs = env.step(onehot(3))
  check_obs(obs, env.obs_space)
  assert not obs['is_first']
  assert isinstance(obs['reward'], np.float32)


def test_atari_starts_after_1_to_30_random_noops():
  # As gym's AtariPreprocessing (the original): randint(1, noop_max + 1).
  env = envs.Atari('pong', seed=0)
  frames = collections.Counter()
  for _ in range(400):
    env.reset()
    frames[env._ale.getEpisodeFrameNumber()] += 1
  assert sorted(frames) == list(range(1, 31))
  env = envs.Atari('pong', seed=0, noops=0)
  env.reset()
  assert env._ale.getEpisodeFrameNumber() == 0


def test_a_game_ending_mid_repeat_shows_its_last_frame_where_gymnasium_is_stale(
):
  # Why envs.Atari is ours and not gymnasium's AtariPreprocessing (which the
  # original used; bench/env_speed.py times both): when the game ends before
  # the last frame of a repeat, the wrapper returns the previous step's pooled
  # frame again, and ours the screen the game ended on.
  import ale_py
  gymnasium.register_envs(ale_py)
  # Pong, noops 0: random play ends at frame 3606 (ours), 3607 (theirs).
  seed = 2
  env = envs.Atari('pong', seed=seed, noops=0)
  env.reset()
  rng = np.random.default_rng(seed)
  obs = {'is_last': False}
  while not obs['is_last']:
    obs = env.step({'action': rng.integers(18)})
  assert env._ale.getEpisodeFrameNumber() % 4 != 0  # Mid-repeat.
  screen = np.zeros((210, 160, 1), np.uint8)
  env._ale.getScreenGrayscale(screen[:, :, 0])
  np.testing.assert_array_equal(obs['image'], envs._resize(screen, (64, 64)))
  theirs = gymnasium.make('ALE/Pong-v5', frameskip=1,
                          repeat_action_probability=0.25,
                          full_action_space=True)
  theirs = gymnasium.wrappers.AtariPreprocessing(
      theirs, noop_max=0, frame_skip=4, screen_size=64, grayscale_obs=True)
  previous, _ = theirs.reset(seed=seed)
  done = False
  while not done:
    last = previous
    previous, _, terminated, truncated, _ = theirs.step(int(rng.integers(18)))
    done = terminated or truncated
  assert theirs.unwrapped.ale.getEpisodeFrameNumber() % 4 != 0  # Mid-repeat.
  np.testing.assert_array_equal(previous, last)  # The same frame again.
  theirs.close()


def rollout(env, actions):
  env.reset()
  return np.stack([env.step({'action': a})['image'] for a in actions])


def test_sticky_actions_make_the_same_actions_diverge_across_seeds():
  # Pong's paddle moves with RIGHT (3) and LEFT (4); no-ops off to isolate
  # stickiness.
  actions = ([3] * 5 + [4] * 5) * 10
  make = functools.partial(envs.Atari, 'pong', noops=0)
  sticky = [rollout(make(seed=seed), actions) for seed in (0, 1)]
  assert (sticky[0] != sticky[1]).any()
  plain = [rollout(make(seed=seed, sticky=False), actions) for seed in (0, 1)]
  assert (plain[0] == plain[1]).all()


def test_action_repeat_sums_rewards_and_max_pools_the_last_two_frames():
  raw = (210, 160)
  make = functools.partial(
      envs.Atari, 'pong', size=raw, noops=0, sticky=False, seed=3)
  coarse, fine = make(action_repeat=4), make(action_repeat=1)
  coarse.reset()
  fine.reset()
  rng = np.random.default_rng(0)
  rewards = []
  for action in rng.integers(0, 18, 400):
    obs = coarse.step({'action': action})
    frames = [fine.step({'action': action}) for _ in range(4)]
    assert obs['reward'] == sum(frame['reward'] for frame in frames)
    pooled = np.maximum(frames[2]['image'], frames[3]['image'])
    assert (obs['image'] == pooled).all()
    rewards.append(obs['reward'])
  assert min(rewards) == -1  # The opponent scored within 1600 frames.


def test_time_limit_ends_the_episode_without_a_terminal():
  env = envs.make('atari_pong', action_repeat=4, time_limit=10, seed=0)
  env.reset()
  for step in range(1, 11):
    obs = env.step(onehot(0))
    assert obs['is_last'] == (step == 10)
    assert not obs['is_terminal']
  with pytest.raises(RuntimeError, match='reset'):
    env.step(onehot(0))
  assert env.reset()['is_first']


def test_breakout_ends_at_game_over_not_at_a_life_loss():
  env = envs.Atari('breakout', seed=0)
  action_env = envs.OneHotAction(env)
  env.reset()
  rng = np.random.default_rng(0)
  lives = [env._ale.lives()]
  assert lives == [5]
  for step in range(5000):
    obs = action_env.step(onehot(rng.integers(18)))
    lives.append(env._ale.lives())
    if obs['is_last']:
      break
    assert not obs['is_terminal']
  assert obs['is_last'] and obs['is_terminal'], f'no game over in {step} steps'
  assert lives[-1] == 0
  assert len(set(lives)) == 6  # Lost lives 5, 4, 3, 2, 1 on the way.


def test_life_done_ends_the_episode_at_the_first_life_loss():
  env = envs.Atari('breakout', seed=0, life_done=True)
  env.reset()
  rng = np.random.default_rng(0)
  for _ in range(2000):
    obs = env.step({'action': rng.integers(18)})
    if obs['is_last']:
      break
  assert obs['is_terminal'] and env._ale.lives() == 4


def test_color_atari_and_minimal_action_set():
  env = envs.Atari('breakout', grayscale=False, all_actions=False, seed=0)
  assert env.reset()['image'].shape == (64, 64, 3)
  assert env.act_space['action'].n == 4


def test_unknown_game_names_close_matches():
  with pytest.raises(envs.UnknownTask, match=r"'pongg'.*atari_pongg.*pong"):
    envs.make('atari_pongg')
  with pytest.raises(envs.UnknownTask, match='montezuma_revenge'):
    envs.check_task('atari_montezuma')
  with pytest.raises(envs.UnknownTask, match='atari, dmc, crafter'):
    envs.check_task('mujoco_walker')
  with pytest.raises(envs.UnknownTask,
                     match='crafter_reward, crafter_noreward'):
    envs.check_task('crafter_hard')
  for task in ('atari_pong', 'atari_montezuma_revenge', 'atari_private_eye',
               'atari_james_bond'):
    envs.check_task(task)
  assert envs.atari_game('atari_james_bond') == 'jamesbond'


def test_missing_package_names_the_install_command(monkeypatch):
  find_spec = envs.importlib.util.find_spec
  monkeypatch.setattr(
      envs.importlib.util, 'find_spec',
      lambda name: (None if name in ('crafter', 'dm_control', 'minigrid')
                    else find_spec(name)))
  with pytest.raises(envs.MissingPackage, match='requirements-extras.txt'):
    envs.check_task('crafter_reward')
  with pytest.raises(envs.MissingPackage, match="'minigrid'"):
    envs.make('minigrid_empty_5x5')
  with pytest.raises(envs.MissingPackage, match='dm-control'):
    envs.make('dmc_walker_walk')


def test_make_rejects_unknown_mode():
  with pytest.raises(
      ValueError, match="mode 'test' is not one of: train, eval"):
    envs.make('atari_pong', mode='test')


# Gym envs ------------------------------------------------------------------


class TinyImageEnv(gymnasium.Env):
  """8x8 RGB frames showing the step count; reward = action; ends at 4."""

  observation_space = gymnasium.spaces.Box(0, 255, (8, 8, 3), np.uint8)
  action_space = gymnasium.spaces.Discrete(3)

  def reset(self, seed=None, options=None):
    super().reset(seed=seed)
    self.count = 0
    return np.zeros((8, 8, 3), np.uint8), {}

  def step(self, action):
    assert isinstance(action, int)
    self.count += 1
    image = np.full((8, 8, 3), 10 * self.count, np.uint8)
    return image, float(action), self.count == 4, False, {}


def test_gym_image_env_gets_image_key_and_one_hot_actions():
  env = envs.GymWrapper(TinyImageEnv())
  assert env.obs_space['image'].shape == (8, 8, 3)
  env = envs.OneHotAction(envs.ResizeImage(env, (64, 64)))
  assert env.act_space['action'].shape == (3,)
  obs = env.reset()
  check_obs(obs, env.obs_space)
  assert obs['image'].shape == (64, 64, 3) and obs['is_first']
  for step in range(1, 5):
    obs = env.step(onehot(2, 3))
    check_obs(obs, env.obs_space)
    assert obs['reward'] == 2.0 and (obs['image'] == 10 * step).all()
  assert obs['is_last'] and obs['is_terminal']


def test_gym_vector_env_terminal_and_truncation():
  env = envs.GymWrapper(gymnasium.make('CartPole-v1'), seed=0)
  assert env.obs_space['vector'] == gymnasium.spaces.Box(
      -np.inf, np.inf, (4,), np.float32)
  env = envs.OneHotAction(env)
  obs = env.reset()
  check_obs(obs, env.obs_space)
  for _ in range(100):  # Always push right: the pole falls.
    obs = env.step(onehot(1, 2))
    if obs['is_last']:
      break
  assert obs['is_last'] and obs['is_terminal']
  env = envs.OneHotAction(envs.GymWrapper(
      gymnasium.make('CartPole-v1', max_episode_steps=4), seed=0))
  env.reset()
  flags = [env.step(onehot(step % 2, 2)) for step in range(4)]
  assert [f['is_last'] for f in flags] == [False, False, False, True]
  assert not flags[-1]['is_terminal']


def test_from_gym_picks_the_action_wrapper():
  env = envs.from_gym(gymnasium.make('Pendulum-v1'), seed=0, time_limit=3)
  space = env.act_space['action']
  assert space.low.tolist() == [-1] and space.high.tolist() == [1]
  assert not getattr(space, 'discrete', False)
  env.reset()
  obs = [env.step({'action': np.array([1.0], np.float32)}) for _ in range(3)]
  assert [o['is_last'] for o in obs] == [False, False, True]
  assert obs[0]['vector'].shape == (3,)
  env = envs.from_gym(TinyImageEnv())
  assert env.act_space['action'].discrete


def test_gym_dict_observations_keep_their_keys():
  class DictEnv(TinyImageEnv):
    observation_space = gymnasium.spaces.Dict({
        'pixels': gymnasium.spaces.Box(0, 255, (8, 8, 3), np.uint8),
        'speed': gymnasium.spaces.Box(-1, 1, (), np.float64),
    })

    def reset(self, seed=None, options=None):
      image, info = super().reset(seed=seed)
      return {'pixels': image, 'speed': 0.5}, info

  env = envs.GymWrapper(DictEnv())
  assert env.obs_space['speed'].shape == (1,)
  obs = env.reset()
  check_obs(obs, env.obs_space)


@pytest.mark.parametrize('obs_space, act_space, bad', [
    (gymnasium.spaces.Box(0, 1, (4,)), gymnasium.spaces.Dict(
        {'a': gymnasium.spaces.Dict({'b': gymnasium.spaces.Discrete(2)})}),
     'Dict'),
    (gymnasium.spaces.Tuple([gymnasium.spaces.Discrete(2)]),
     gymnasium.spaces.Discrete(2), 'Tuple'),
    (gymnasium.spaces.Text(5), gymnasium.spaces.Discrete(2), 'Text'),
    (gymnasium.spaces.Box(0, 1, (4, 4)), gymnasium.spaces.Discrete(2),
     r'Box\(0.0, 1.0, \(4, 4\)'),
    (gymnasium.spaces.Box(0, 1, (4,)), gymnasium.spaces.Box(0, 1, (2, 2)),
     r'Box\(0.0, 1.0, \(2, 2\)'),
    # Bounds that differ print as arrays of several lines: named by shape.
    (gymnasium.spaces.Box(np.zeros((4, 4), np.float32),
                          np.arange(1, 17, dtype=np.float32).reshape(4, 4)),
     gymnasium.spaces.Discrete(2),
     r"'vector': Box\(shape \(4, 4\), float32\)"),
])
def test_unsupported_gym_spaces_are_rejected_before_running(
    obs_space, act_space, bad):
  class BadEnv(gymnasium.Env):
    def reset(self, seed=None, options=None):
      raise AssertionError('must not run')

  env = BadEnv()
  env.observation_space, env.action_space = obs_space, act_space
  with pytest.raises(envs.UnsupportedSpace, match=bad) as info:
    envs.GymWrapper(env)
  assert 'Supported' in str(info.value) and '\n' not in str(info.value)


# Gym tasks: gym_<id> ----------------------------------------------------------


def register_test_env(monkeypatch, env_id, entry_point):
  """Register a gym id for one test (monkeypatch removes it after)."""
  spec = gymnasium.envs.registration.EnvSpec(env_id, entry_point=entry_point)
  monkeypatch.setitem(gymnasium.envs.registry, env_id, spec)


def test_gym_task_builds_with_the_interface_spaces():
  assert envs._split_task('gym_ALE/Pong-v5') == ('gym', 'ALE/Pong-v5')
  assert envs._split_task('gym_ale_py:ALE/Pong-v5') == (
      'gym', 'ale_py:ALE/Pong-v5')
  envs.check_task('gym_CartPole-v1')
  env = envs.make('gym_CartPole-v1', seed=0)
  space = env.act_space['action']
  assert isinstance(space, gymnasium.spaces.Box) and space.discrete
  assert space.shape == (2,) and space.dtype == np.float32
  assert env.obs_space['vector'] == gymnasium.spaces.Box(
      -np.inf, np.inf, (4,), np.float32)
  obs = env.reset()
  check_obs(obs, env.obs_space)
  assert obs['is_first']
  obs = env.step(onehot(1, 2))
  check_obs(obs, env.obs_space)
  assert obs['reward'] == 1 and not obs['is_first']
  # gymnasium's 'module:Id' imports the module that registers the id.
  env = envs.make('gym_ale_py:ALE/Pong-v5', seed=0)
  assert env.act_space['action'].shape == (6,)
  check_obs(env.reset(), env.obs_space)


def test_gym_images_are_resized_to_render_size(monkeypatch):
  register_test_env(monkeypatch, 'TestTinyImage-v0', TinyImageEnv)
  env = envs.make('gym_TestTinyImage-v0', size=(16, 16))
  assert env.obs_space['image'].shape == (16, 16, 3)
  obs = env.reset()
  check_obs(obs, env.obs_space)
  obs = env.step(onehot(2, 3))
  assert (obs['image'] == 10).all() and obs['reward'] == 2


def test_gym_action_repeat_sums_rewards_and_stops_at_the_episode_end():
  # Seed 1: pushing right, the pole falls at frame 9, mid-repeat.
  coarse = envs.make('gym_CartPole-v1', action_repeat=2, seed=1)
  fine = envs.make('gym_CartPole-v1', seed=1)
  coarse.reset()
  fine.reset()
  frames = []
  while not (frames and frames[-1]['is_last']):  # Push right: it falls.
    frames.append(fine.step(onehot(1, 2)))
  assert len(frames) == 9
  steps = []
  while not (steps and steps[-1]['is_last']):
    steps.append(coarse.step(onehot(1, 2)))
  assert len(steps) == 5
  for index, obs in enumerate(steps):
    pair = frames[2 * index:2 * index + 2]
    assert obs['reward'] == sum(frame['reward'] for frame in pair)
    np.testing.assert_array_equal(obs['vector'], pair[-1]['vector'])
  assert steps[-1]['reward'] == 1 and steps[-1]['is_terminal']
  with pytest.raises(ValueError, match='action_repeat 0'):
    envs.make('gym_CartPole-v1', action_repeat=0)


def test_gym_time_limit_counts_agent_steps():
  env = envs.make('gym_CartPole-v1', action_repeat=2, time_limit=3, seed=0)
  env.reset()
  obs = [env.step(onehot(step % 2, 2)) for step in range(3)]
  assert [o['is_last'] for o in obs] == [False, False, True]
  assert not obs[-1]['is_terminal'] and obs[-1]['reward'] == 2


def test_gym_kwargs_reach_gymnasium_make():
  kwargs = envs.parse_gym_kwargs('{"max_episode_steps": 4}')
  assert kwargs == {'max_episode_steps': 4}
  assert envs.parse_gym_kwargs('{}') == envs.parse_gym_kwargs('') == {}
  env = envs.make('gym_CartPole-v1', gym_kwargs=kwargs, seed=0)
  env.reset()
  obs = [env.step(onehot(step % 2, 2)) for step in range(4)]
  assert [o['is_last'] for o in obs] == [False, False, False, True]
  assert not obs[-1]['is_terminal']
  # Sutton and Barto's reward: 0 per step, -1 when the pole falls.
  env = envs.make('gym_CartPole-v1', seed=0,
                  gym_kwargs='{"sutton_barto_reward": true}')
  env.reset()
  assert env.step(onehot(1, 2))['reward'] == 0
  with pytest.raises(envs.UnknownTask, match='not JSON'):
    envs.parse_gym_kwargs('{max_episode_steps: 4}')
  with pytest.raises(envs.UnknownTask, match='not an object'):
    envs.parse_gym_kwargs('[4]')
  with pytest.raises(envs.UnknownTask, match="not fit 'CartPole-v1'.*colour"):
    envs.check_task('gym_CartPole-v1', {'colour': 'red'})
  with pytest.raises(envs.UnknownTask, match="gym_<id> tasks only.*atari_pong"):
    envs.check_task('atari_pong', '{"max_episode_steps": 4}')


def test_gym_typo_names_close_registered_ids():
  for call in (envs.check_task, envs.make):
    with pytest.raises(envs.UnknownTask,
                       match=r"'CartPol-v1'.*Close matches: gym_CartPole-v1"):
      call('gym_CartPol-v1')
  with pytest.raises(envs.UnknownTask, match='gym_ALE/Pong-v5'):
    envs.check_task('gym_ALE/Pongg-v5')
  # check_task loads no TensorFlow (train.py checks before it loads).
  code = ('import sys\nfrom common import envs\n'
          'envs.check_task("gym_CartPole-v1")\n'
          'assert "tensorflow" not in sys.modules\n')
  proc = subprocess.run([sys.executable, '-c', code], capture_output=True,
                        text=True, cwd=pathlib.Path(__file__).parent.parent)
  assert proc.returncode == 0, proc.stderr


def test_gym_missing_package_names_the_pip_command(monkeypatch):
  find_spec = envs.importlib.util.find_spec
  monkeypatch.setattr(
      envs.importlib.util, 'find_spec',
      lambda name: None if name == 'minigrid' else find_spec(name))
  with pytest.raises(envs.MissingPackage, match='`pip install minigrid`'):
    envs.check_task('gym_MiniGrid-Empty-5x5-v0')
  with pytest.raises(envs.MissingPackage, match="module 'no_such_module'"):
    envs.make('gym_no_such_module:Thing-v0')


class TupleActionEnv(gymnasium.Env):
  observation_space = gymnasium.spaces.Box(-1, 1, (3,), np.float32)
  action_space = gymnasium.spaces.Tuple(
      [gymnasium.spaces.Discrete(2), gymnasium.spaces.Discrete(3)])

  def reset(self, seed=None, options=None):
    raise AssertionError('must not run')


def test_gym_unsupported_action_space_is_named(monkeypatch):
  register_test_env(monkeypatch, 'TestTupleAction-v0', TupleActionEnv)
  space = r'Tuple\(Discrete\(2\), Discrete\(3\)\)'
  with pytest.raises(envs.UnsupportedSpace, match=space) as info:
    envs.check_task('gym_TestTupleAction-v0')
  assert 'gym_TestTupleAction-v0' in str(info.value)
  with pytest.raises(envs.UnsupportedSpace, match=space):
    envs.make('gym_TestTupleAction-v0')
  # Raw MiniGrid observations (a Discrete and a Text) point to its tasks.
  import minigrid  # noqa: F401
  with pytest.raises(envs.UnsupportedSpace, match='minigrid_<name> tasks'):
    envs.check_task('gym_MiniGrid-Empty-5x5-v0')


def test_process_parallel_gym_env_steps_as_one_here():
  ctor = functools.partial(
      envs.make, 'gym_CartPole-v1', action_repeat=2, time_limit=50, seed=0,
      gym_kwargs={'max_episode_steps': 6})
  here, there = envs.Parallel(ctor, 'none'), envs.Parallel(ctor, 'process')
  assert there.act_space['action'].discrete
  assert there.obs_space['vector'].shape == (4,)
  pairs = [(here.reset(), there.reset())]
  pairs += [(here.step(onehot(i % 2, 2)), there.step(onehot(i % 2, 2)))
            for i in range(3)]
  for mine, theirs in pairs:
    check_obs(theirs, there.obs_space)
    assert list(mine) == list(theirs)
    for key in mine:
      np.testing.assert_array_equal(mine[key], theirs[key])
  assert theirs['is_last'] and not theirs['is_terminal']  # 6 frames.
  here.close()
  there.close()
  assert there._process.exitcode == 0


# Action wrappers -----------------------------------------------------------


class RecordingEnv:
  """Our interface around a given action space; remembers the last action."""

  def __init__(self, action_space):
    self.act_space = {'action': action_space}
    self.obs_space = {'vector': envs._vector_space(1), **envs._base_spaces()}
    self.actions = []

  def reset(self):
    return envs._obs(0.0, True, False, False, vector=np.zeros(1, np.float32))

  def step(self, action):
    self.actions.append(action['action'])
    return envs._obs(0.0, False, False, False, vector=np.zeros(1, np.float32))


def test_one_hot_action_passes_the_index_and_rejects_other_vectors():
  inner = RecordingEnv(gymnasium.spaces.Discrete(4))
  env = envs.OneHotAction(inner)
  space = env.act_space['action']
  assert space.discrete and space.shape == (4,) and space.dtype == np.float32
  assert pickle.loads(pickle.dumps(space)).discrete
  env.step(onehot(2, 4))
  # bfloat16 rounding
  env.step({'action': np.array([0, 0, 0, 0.999], np.float32)})
  assert inner.actions == [2, 3]
  for bad in ([0.3, 0.7, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], [1, 0, 0],
              [np.nan, 1, 0, 0]):
    with pytest.raises(ValueError, match='one-hot vector of shape \\(4,\\)'):
      env.step({'action': np.array(bad, np.float32)})
  with pytest.raises(envs.UnsupportedSpace):
    envs.OneHotAction(RecordingEnv(gymnasium.spaces.Box(-1, 1, (2,))))


def test_normalize_action_maps_minus_one_one_to_finite_bounds_only():
  inner = RecordingEnv(gymnasium.spaces.Box(
      np.array([0, -2, -np.inf], np.float32),
      np.array([10, 2, np.inf], np.float32)))
  env = envs.NormalizeAction(inner)
  space = env.act_space['action']
  assert space.low.tolist() == [-1, -1, -np.inf]
  assert space.high.tolist() == [1, 1, np.inf]
  env.step({'action': np.array([-1, 1, 5], np.float32)})
  env.step({'action': np.array([0, -0.5, -7], np.float32)})
  assert inner.actions[0].tolist() == [0, 2, 5]
  assert inner.actions[1].tolist() == [5, -1, -7]


# Parallel ------------------------------------------------------------------


@pytest.mark.parametrize('strategy', ['none', 'thread', 'process'])
def test_parallel_runs_train_and_eval_atari_envs(strategy):
  ctors = [
      functools.partial(
          envs.make, 'atari_pong', mode, action_repeat=4, time_limit=27000,
          seed=seed)
      for seed, mode in enumerate(['train', 'eval'])]
  parallel = [envs.Parallel(ctor, strategy) for ctor in ctors]
  for env in parallel:
    assert env.act_space['action'].discrete
    assert env.obs_space['image'].shape == (64, 64, 1)
  promises = [env.reset(blocking=False) for env in parallel]
  for env, promise in zip(parallel, promises):
    obs = promise()
    check_obs(obs, env.obs_space)
    assert obs['is_first']
  for step in range(5):
    promises = [env.step(onehot(step), blocking=False) for env in parallel]
    for env, promise in zip(parallel, promises):
      obs = promise()
      check_obs(obs, env.obs_space)
      assert not obs['is_first']
  assert not parallel[0].step(onehot(1))['is_last']
  for env in parallel:
    env.close()
    env.close()
    if strategy == 'process':
      assert not env._process.is_alive() and env._process.exitcode == 0
    with pytest.raises(RuntimeError, match='closed'):
      env.reset()


def test_packing_gives_back_each_value_with_its_type():
  env = envs.make('atari_pong', action_repeat=4, seed=0)
  packing = envs._Packing(env.obs_space)
  for obs in [env.reset(), env.step(onehot(3))]:
    data = packing.pack(obs)
    assert len(data) == 64 * 64 + 4 + 3  # image, float32 reward, 3 flags
    back = packing.unpack(data)
    assert list(back) == list(env.obs_space)
    for key, value in obs.items():
      assert type(back[key]) is type(value), key
      np.testing.assert_array_equal(back[key], value)
    assert back['image'].flags.writeable  # A copy of its own.
    assert not np.shares_memory(back['image'], data)


def test_packing_declines_what_the_spaces_do_not_lay_out():
  env = envs.make('atari_pong', action_repeat=4, seed=0)
  packing = envs._Packing(env.obs_space)
  obs = env.reset()
  assert packing.pack(obs) is not None
  for change in [
      {'extra': np.zeros(2)}, {'image': obs['image'].astype(np.float32)},
      {'image': obs['image'][:32]}, {'reward': np.array(0, np.float32)},
      {'reward': 0.0}, {'is_last': np.bool_(False)}]:
    assert packing.pack({**obs, **change}) is None, change
  assert packing.pack([obs]) is None
  assert envs._Packing({'text': gymnasium.spaces.Text(5)}).pack(
      {'text': 'hello'}) is None


def test_a_process_env_steps_exactly_as_one_in_this_process():
  ctor = functools.partial(
      envs.make, 'atari_pong', action_repeat=4, time_limit=27000, seed=3)
  here, there = envs.Parallel(ctor, 'none'), envs.Parallel(ctor, 'process')
  tags = []
  receive = there._conn.recv_bytes

  def spy():  # The tag of each reply from the env process.
    message = receive()
    tags.append(message[:1])
    return message
  there._conn.recv_bytes = spy
  rng = np.random.default_rng(0)
  pairs = [(here.reset(), there.reset())]
  for step in range(30):
    action = onehot(int(rng.integers(18)))
    if step == 10:  # float64 does not fit the layout: it travels pickled.
      action = {'action': action['action'].astype(np.float64)}
    pairs.append((here.step(action), there.step(action)))
  for mine, theirs in pairs:
    assert list(mine) == list(theirs)
    for key in mine:
      assert type(mine[key]) is type(theirs[key]), key
      np.testing.assert_array_equal(mine[key], theirs[key])
  assert tags == [envs._OBS] * 31  # Every observation came back packed.
  here.close()
  there.close()


def test_an_idle_env_process_sleeps():
  env = envs.Parallel(
      functools.partial(envs.make, 'atari_pong', seed=0), 'process')
  env.reset()
  env.step(onehot(0))
  tasks = pathlib.Path(f'/proc/{env._process.pid}/task')

  def cpu_seconds():
    # Time on a CPU of the env process's threads (schedstat counts ns). Not
    # utime + stime of /proc/PID/stat: those are clock ticks rescaled to the
    # exact time when read, and jumped by up to 10 ticks (0.1 s) in the
    # second after a step while the exact time grew by 0.17 ms.
    return sum(int((task / 'schedstat').read_text().split()[0])
               for task in tasks.iterdir()) / 1e9

  before = cpu_seconds()
  time.sleep(1)
  used = cpu_seconds() - before
  env.close()
  assert used < 0.1  # It polls 0.3 ms for the next call, then sleeps.


def test_process_errors_carry_the_env_traceback():
  with pytest.raises(envs.UnknownTask, match='pongg') as info:
    envs.Parallel(functools.partial(envs.make, 'atari_pongg'), 'process')
  assert 'Traceback in the env process' in ''.join(info.value.__notes__)
  env = envs.Parallel(
      functools.partial(envs.make, 'atari_pong', seed=0), 'process')
  env.reset()
  with pytest.raises(ValueError, match='one-hot') as info:
    env.step({'action': np.ones(18, np.float32)})
  assert 'in step' in ''.join(info.value.__notes__)
  assert not env.step(onehot(0))['is_first']  # The env survives the error.
  env.close()
  with pytest.raises(ValueError, match="envs_parallel 'fork'.*none, thread"):
    envs.Parallel(functools.partial(envs.make, 'atari_pong'), 'fork')


def test_parallel_none_runs_the_env_in_the_callers_thread():
  class ThreadEnv(RecordingEnv):
    def __init__(self):
      super().__init__(gymnasium.spaces.Discrete(2))
      self.threads = [threading.get_ident()]

    def step(self, action):
      self.threads.append(threading.get_ident())
      return super().step(action)

    def close(self):
      self.threads.append(threading.get_ident())

  env = envs.Parallel(ThreadEnv, 'none')
  promise = env.step({'action': 1}, blocking=False)
  assert env._env.actions == [1]  # Stepped before the promise is called.
  promise()
  inner = env._env
  env.close()
  assert inner.threads == [threading.get_ident()] * 3  # Built, step, close.


def test_dmc_runs_in_a_process_whatever_envs_parallel_says():
  for requested in ('none', 'thread'):
    strategy, reason = envs.where_to_run('dmc_walker_walk', requested)
    assert strategy == 'process'
    assert "MuJoCo's EGL renderer and TensorFlow" in reason
    assert '\n' not in reason
  assert envs.where_to_run('dmc_walker_walk', 'process') == ('process', None)
  for task in ('atari_pong', 'crafter_reward', 'gym_CartPole-v1'):
    for requested in ('none', 'thread', 'process'):
      assert envs.where_to_run(task, requested) == (requested, None)
  with pytest.raises(ValueError, match="envs_parallel 'fork'"):
    envs.where_to_run('atari_pong', 'fork')


# Optional suites: skipped only when their package is not installed ---------


def test_dmc_walker_images_proprio_and_time_limit():
  # dm_control is imported only in child processes: MuJoCo loaded beside
  # TensorFlow (which other tests load here) crashes the process at exit.
  if importlib.util.find_spec('dm_control') is None:
    pytest.skip('dm_control is an optional extra (requirements-extras.txt)')
  # Rendering runs on the CPU here (~20 ms a frame): repeat 100 frames per
  # step to reach the env's own limit of 1000 frames in 10 steps.
  # In a process of its own, as train.py runs DMC: MuJoCo's EGL renderer
  # crashes a process that has loaded TensorFlow (other tests load it).
  env = envs.Parallel(functools.partial(
      envs.make, 'dmc_walker_walk', action_repeat=100, seed=0), 'process')
  space = env.act_space['action']
  assert (space.shape == (6,) and (space.low == -1).all()
          and (space.high == 1).all())
  assert env.obs_space['image'].shape == (64, 64, 3)
  assert env.obs_space['height'].shape == (1,)
  assert env.obs_space['orientations'].shape == (14,)
  obs = env.reset()
  check_obs(obs, env.obs_space)
  assert obs['image'].std() > 0
  rng = np.random.default_rng(0)
  for step in range(1, 100):
    obs = env.step({'action': rng.uniform(-1, 1, 6).astype(np.float32)})
    if obs['is_last']:
      break
  check_obs(obs, env.obs_space)
  assert step == 10 and not obs['is_terminal']
  assert 0 < obs['reward'] <= 100  # Summed over 100 frames of reward <= 1.
  env.close()
  code = (
      'from common import envs\n'
      'envs.check_task("dmc_cup_catch"); '
      'envs.check_task("dmc_point_mass_easy")\n'
      'try:\n  envs.check_task("dmc_walker_wlak")\n'
      'except envs.UnknownTask as e:\n  print(e)\n')
  proc = subprocess.run([sys.executable, '-c', code], capture_output=True,
                        text=True, cwd=pathlib.Path(__file__).parent.parent)
  assert proc.returncode == 0, proc.stderr
  assert 'walker_walk' in proc.stdout


def test_crafter_noreward_logs_its_reward_and_evaluates_with_it():
  # make test installs the extras: missing is a failure.
  import crafter  # noqa: F401
  rewards = {}
  for mode in ('train', 'eval'):
    env = envs.make('crafter_noreward', mode, seed=0)
    assert env.act_space['action'].shape == (17,)
    obs = env.reset()
    check_obs(obs, env.obs_space)
    assert obs['image'].shape == (64, 64, 3)
    assert obs['log_achievement_collect_wood'] == 0
    rng = np.random.default_rng(0)
    rewards[mode] = []
    for _ in range(100):
      obs = env.step(onehot(rng.integers(17), 17))
      check_obs(obs, env.obs_space)
      rewards[mode].append((obs['reward'], obs['log_reward']))
  train, evaluation = np.array(rewards['train']), np.array(rewards['eval'])
  # Random actions earn Crafter reward (an achievement within 100 steps);
  # crafter_noreward training only logs it, evaluation scores it.
  assert (train[:, 1] != 0).any() and (train[:, 0] == 0).all()
  assert (evaluation[:, 0] != 0).any()
  assert (evaluation[:, 0] == evaluation[:, 1]).all()


def test_minigrid_from_pixels():
  # make test installs the extras: missing is a failure.
  import minigrid  # noqa: F401
  env = envs.make_minigrid('MiniGrid-Empty-5x5-v0', seed=0)
  assert (env.act_space['action'].shape == (7,)
          and env.act_space['action'].discrete)
  obs = env.reset()
  check_obs(obs, env.obs_space)
  assert obs['image'].shape == (64, 64, 3) and obs['image'].std() > 0
  for step in range(1, 200):  # Turning left forever never reaches the goal.
    obs = env.step(onehot(0, 7))
    if obs['is_last']:
      break
  assert step == 100 and not obs['is_terminal']


def test_minigrid_task_names_map_to_gymnasium_ids():
  # make test installs the extras: missing is a failure.
  import minigrid  # noqa: F401
  assert envs.minigrid_env_id('empty_5x5') == 'MiniGrid-Empty-5x5-v0'
  assert envs.minigrid_env_id('door_key_5x5') == 'MiniGrid-DoorKey-5x5-v0'
  env = envs.make('minigrid_empty_5x5', seed=0)
  space = env.act_space['action']
  assert space.shape == (7,) and space.discrete
  obs = env.reset()
  check_obs(obs, env.obs_space)
  assert obs['image'].shape == (64, 64, 3) and obs['image'].dtype == np.uint8
  env = envs.make('minigrid_empty_5x5', time_limit=3, seed=0)
  env.reset()
  assert [env.step(onehot(0, 7))['is_last'] for _ in range(3)] == [
      False, False, True]
  with pytest.raises(ValueError, match='action repeat'):
    envs.make('minigrid_empty_5x5', action_repeat=2)
  with pytest.raises(envs.UnknownTask,
                     match=r"'emtpy_5x5'.*minigrid_empty_5x5"):
    envs.make('minigrid_emtpy_5x5')
  with pytest.raises(envs.UnknownTask, match='minigrid_door_key_5x5'):
    envs.check_task('minigrid_doorkey_5x')
