"""Actions of several parts: a gym MultiDiscrete or Dict action as one flat
vector of one-hot and [-1, 1] blocks (envs.ActionParts), the actor's joint
distribution over them, and runs that train, load and act on such envs."""

import inspect
import json
import os
import pickle
import subprocess
import sys

import gymnasium
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_probability import distributions as tfd

from common import envs
from common import errors
from dreamerv2 import agent as agent_lib
from dreamerv2 import api
from dreamerv2 import build
from dreamerv2 import expl

import dreamer_helpers as H
import test_api
import test_train

Spaces = gymnasium.spaces


class TinyEnv(gymnasium.Env):
  """Vector observations [step / length, step % 3, step % 2], episodes of
  `length` steps; every action must be in the action space."""

  observation_space = Spaces.Box(-np.inf, np.inf, (3,), np.float32)

  def __init__(self, length=10):
    self.length = length
    self.actions = []

  def reset(self, seed=None, options=None):
    super().reset(seed=seed)
    self.count = 0
    return self._obs(), {}

  def step(self, action):
    assert self.action_space.contains(action), action
    self.actions.append(action)
    reward = self._reward(action)
    self.count += 1
    return self._obs(), reward, False, self.count >= self.length, {}

  def _obs(self):
    return np.array(
        [self.count / self.length, self.count % 3, self.count % 2],
        np.float32)


class MultiDiscreteEnv(TinyEnv):
  """Reward 1 per dimension whose index is the step mod 3 (mod 2)."""

  action_space = Spaces.MultiDiscrete([3, 2])

  def _reward(self, action):
    return float(action[0] == self.count % 3) + float(
        action[1] == self.count % 2)


class DictEnv(TinyEnv):
  """Reward 1 when 'move' is the step mod 3, less the force's distance to
  1."""

  action_space = Spaces.Dict({
      'move': Spaces.Discrete(3), 'force': Spaces.Box(-2, 2, (2,))})

  def _reward(self, action):
    return float(action['move'] == self.count % 3) - float(
        np.abs(action['force'] - 1).sum()) / 4


MULTI_PARTS = (('0', 'discrete', 3), ('1', 'discrete', 2))
# gymnasium sorts a Dict's keys.
DICT_PARTS = (('force', 'continuous', 2), ('move', 'discrete', 3))
ENVS = {'multidiscrete': (MultiDiscreteEnv, MULTI_PARTS),
        'dict': (DictEnv, DICT_PARTS)}


@pytest.fixture(autouse=True)
def float32():
  with H.precision(32):
    yield


def one_hot(index, n):
  return np.eye(n, dtype=np.float32)[index]


def assert_valid(action, parts):
  """Each discrete block one-hot, each continuous block in [-1, 1]."""
  action = np.asarray(action)
  assert action.shape[-1] == sum(size for _, _, size in parts)
  offset = 0
  for name, kind, size in parts:
    block = action[..., offset:offset + size]
    if kind == 'discrete':
      np.testing.assert_allclose(
          block, np.eye(size)[block.argmax(-1)], atol=1e-6, err_msg=name)
    else:
      assert np.all(np.abs(block) <= 1), (name, block)
    offset += size


# The env side ----------------------------------------------------------------


def test_multidiscrete_is_one_one_hot_block_per_dimension():
  inner = MultiDiscreteEnv()
  env = envs.from_gym(inner)
  space = env.act_space['action']
  assert isinstance(space, envs.ActionParts)
  assert space.parts == MULTI_PARTS
  assert space.shape == (5,) and space.dtype == np.float32
  assert space.discrete  # Every part is discrete.
  np.testing.assert_array_equal(space.low, 0)
  np.testing.assert_array_equal(space.high, 1)
  assert pickle.loads(pickle.dumps(space)) == space  # spaces.pkl
  env.reset()
  env.step({'action': np.concatenate([one_hot(2, 3), one_hot(1, 2)])})
  np.testing.assert_array_equal(inner.actions[-1], [2, 1])
  for _ in range(5):
    env.step({'action': space.sample()})  # TinyEnv checks contains().
  with pytest.raises(ValueError, match="Part '1' of action 'action'"):
    env.step({'action': np.array([1, 0, 0, 0.5, 0.5], np.float32)})
  with pytest.raises(ValueError, match=r'shape \(5,\)'):
    env.step({'action': one_hot(0, 3)})


def test_multidiscrete_start_is_added_back():
  inner = MultiDiscreteEnv()
  inner.action_space = Spaces.MultiDiscrete([3, 2], start=[1, -1])
  env = envs.from_gym(inner)
  env.reset()
  env.step({'action': np.concatenate([one_hot(0, 3), one_hot(1, 2)])})
  np.testing.assert_array_equal(inner.actions[-1], [1, 0])


def test_dict_is_a_one_hot_block_and_a_rescaled_box_block():
  inner = DictEnv()
  env = envs.from_gym(inner)
  space = env.act_space['action']
  assert space.parts == DICT_PARTS
  assert not space.discrete  # A continuous part.
  np.testing.assert_array_equal(space.low, [-1, -1, 0, 0, 0])
  np.testing.assert_array_equal(space.high, 1)
  assert pickle.loads(pickle.dumps(space)) == space
  env.reset()
  env.step({'action': np.array([1, -0.5, 0, 1, 0], np.float32)})
  action = inner.actions[-1]
  assert set(action) == {'move', 'force'} and action['move'] == 1
  np.testing.assert_allclose(action['force'], [2, -1])
  for _ in range(5):
    env.step({'action': space.sample()})
  # Process-parallel envs send the flat vector packed by its Box.
  packing = envs._Packing(env.act_space)
  sample = {'action': space.sample()}
  unpacked = packing.unpack(packing.pack(sample))
  np.testing.assert_array_equal(unpacked['action'], sample['action'])


def test_a_dict_of_a_multidiscrete_names_each_dimension():
  class GridEnv(TinyEnv):
    action_space = Spaces.Dict({
        'grid': Spaces.MultiDiscrete([2, 4]), 'push': Spaces.Discrete(2)})

    def _reward(self, action):
      return 0.0

  inner = GridEnv()
  env = envs.from_gym(inner)
  assert env.act_space['action'].parts == (
      ('grid/0', 'discrete', 2), ('grid/1', 'discrete', 4),
      ('push', 'discrete', 2))
  env.reset()
  env.step({'action': np.concatenate(
      [one_hot(1, 2), one_hot(3, 4), one_hot(0, 2)])})
  np.testing.assert_array_equal(inner.actions[-1]['grid'], [1, 3])
  assert inner.actions[-1]['push'] == 0


@pytest.mark.parametrize('action, named', [
    (Spaces.Tuple([Spaces.Discrete(2), Spaces.Discrete(3)]),
     r'Tuple\(Discrete\(2\), Discrete\(3\)\)'),
    (Spaces.Dict({'arm': Spaces.Dict({'grip': Spaces.Discrete(2)})}),
     r"its part 'arm' is Dict\('grip': Discrete\(2\)\)"),
    (Spaces.Dict({'text': Spaces.Text(4)}), r"its part 'text' is Text"),
    # numpy prints its two rows on two lines: the message names the shape.
    (Spaces.MultiDiscrete([[2, 3], [2, 2]]),
     r'space MultiDiscrete\(shape \(2, 2\)\) of'),
    (Spaces.Dict({'move': Spaces.Box(
        np.zeros((2, 2), np.float32), np.float32([[1, 1], [2, 2]]))}),
     r"its part 'move' is Box\(shape \(2, 2\), float32\)"),
], ids=['tuple', 'nested_dict', 'dict_of_text', 'multidiscrete_2d',
        'dict_of_2d_box'])
def test_unsupported_action_spaces_exit_2_naming_them(action, named, capsys):
  inner = MultiDiscreteEnv()
  inner.action_space = action
  with pytest.raises(envs.UnsupportedSpace, match=named):
    envs.from_gym(inner)
  with pytest.raises(SystemExit) as exit_:
    with errors.exit_on_errors():
      envs.from_gym(inner)
  assert exit_.value.code == 2
  lines = capsys.readouterr().err.splitlines()
  assert len(lines) == 1 and 'Unsupported action space' in lines[0]


# The actor -------------------------------------------------------------------


def actor_critic(parts, **updates):
  config = H.tiny_config(**updates)
  tfstep = tf.Variable(0, dtype=tf.int64, trainable=False)
  size = sum(size for _, _, size in parts)
  return agent_lib.ActorCritic(config, size, parts, 12, tfstep)


def separate_dists(ac, feat, parts):
  """The parts' distributions built with TFP from the heads' outputs."""
  hidden = ac.actor.stack(feat)
  config = ac.config.actor
  separate = []
  for head, (_, kind, _) in zip(ac.actor.head.parts, parts):
    out = head.out(hidden)
    if kind == 'discrete':
      separate.append(tfd.OneHotCategorical(logits=out))
    else:
      std = 2 * tf.sigmoid((head.std(hidden) + head._init_std) / 2)
      separate.append(tfd.Independent(tfd.TruncatedNormal(
          tf.tanh(out), std + config.min_std, -1, 1), 1))
  return separate


@pytest.mark.parametrize('env', list(ENVS))
def test_the_joint_log_prob_and_entropy_are_the_sums_of_the_parts(env):
  parts = ENVS[env][1]
  tf.random.set_seed(0)
  ac = actor_critic(parts)
  assert len(ac.actor.head.parts) == len(parts)
  feat = tf.random.normal([7, 12])
  dist = ac.actor(feat)
  action = dist.sample()
  assert action.shape == (7, sum(size for _, _, size in parts))
  assert_valid(action, parts)
  assert_valid(dist.mode(), parts)
  separate = separate_dists(ac, feat, parts)
  blocks = tf.split(action, [size for _, _, size in parts], -1)
  log_prob = sum(d.log_prob(b) for d, b in zip(separate, blocks))
  np.testing.assert_allclose(
      dist.log_prob(action), log_prob, rtol=1e-5, atol=1e-5)
  entropy = sum(d.entropy() for d in separate)
  np.testing.assert_allclose(dist.entropy(), entropy, rtol=1e-5, atol=1e-5)


def test_actor_grad_auto_is_reinforce_with_any_discrete_part():
  assert actor_critic(MULTI_PARTS).actor_grad == 'reinforce'
  assert actor_critic(DICT_PARTS).actor_grad == 'reinforce'
  boxes = (('a', 'continuous', 2), ('b', 'continuous', 1))
  assert actor_critic(boxes).actor_grad == 'dynamics'
  assert actor_critic(DICT_PARTS, actor_grad='both').actor_grad == 'both'


def test_a_discrete_dist_for_continuous_parts_is_refused():
  with pytest.raises(ValueError, match="part 'force'"):
    actor_critic(DICT_PARTS, **{'actor.dist': 'onehot'})
  # All parts discrete: the continuous dist is not used.
  actor_critic(MULTI_PARTS, **{'actor.dist': 'onehot'})
  heads = actor_critic(DICT_PARTS, **{'actor.dist': 'tanh_normal'})
  assert [h._dist for h in heads.actor.head.parts] == [
      'tanh_normal', 'onehot']


def part_batch(obs, space, seed=0):
  """A replay batch [3, 6] with actions valid per part."""
  data = H.batch(obs, {'action': space}, 3, 6, seed=seed, terminal_at=(5,))
  space.seed(seed)
  actions = np.stack([space.sample() for _ in range(18)]).reshape(3, 6, -1)
  return {**data, 'action': tf.constant(actions)}


@pytest.mark.parametrize('env', list(ENVS))
def test_every_head_gets_a_gradient_from_the_actor_loss(env):
  parts = ENVS[env][1]
  space = envs.ActionParts(parts)
  config = H.tiny_config(imag_horizon=5)
  obs = H.obs_space(vector=5)
  tf.random.set_seed(0)
  tfstep = tf.Variable(0, dtype=tf.int64, trainable=False)
  wm = agent_lib.WorldModel(config, obs, space.shape[0], tfstep)
  ac = agent_lib.ActorCritic(config, space.shape[0], parts, wm.feat_size,
                             tfstep)
  data = part_batch(obs, space)
  _, outputs, _ = wm.loss(data)
  start = {k: tf.stop_gradient(v) for k, v in outputs['post'].items()}
  with tf.GradientTape() as tape:
    seq = wm.imagine(ac.actor, start, data['is_terminal'], 5)
    assert_valid(seq['action'][1:], parts)
    seq['reward'], _ = ac.rewnorm(wm.heads['reward'](seq['feat']).mode())
    target, _ = ac.target(seq)
    actor_loss, metrics = ac.actor_loss(seq, target)
  names = H.variable_names(ac)
  variables = ac.actor.trainable_variables
  grads = tape.gradient(actor_loss, variables)
  norms = {names[id(v)]: 0.0 if g is None else float(tf.norm(g))
           for v, g in zip(variables, grads)}
  heads = [n for n in norms if '/head/parts/' in n]
  # out and std of the Box's trunc_normal; out of each categorical.
  expected = sum(2 if kind == 'continuous' else 1 for _, kind, _ in parts)
  assert len(heads) == 2 * expected  # kernel and bias
  assert {n: v for n, v in norms.items() if not v > 0} == {}
  assert np.isfinite(float(metrics['actor_ent']))


# Acting ----------------------------------------------------------------------


def test_random_policy_and_action_noise_are_valid_per_part():
  space = envs.ActionParts(DICT_PARTS)
  policy = build.random_policy(space, seed=0)
  action, _ = policy({'is_first': np.zeros(2000, bool)}, None)
  assert action['action'].shape == (2000, 5)
  assert_valid(action['action'], DICT_PARTS)
  moves = action['action'][:, 2:].argmax(-1)
  assert np.bincount(moves, minlength=3).min() > 550  # Uniform over 3.
  assert action['action'][:, :2].std() > 0.5  # Uniform in [-1, 1].
  # Action noise: each discrete part replaced on its own with probability
  # `amount`, continuous parts perturbed and clipped.
  multi = np.tile(np.concatenate([one_hot(0, 3), one_hot(0, 2)]), (4000, 1))
  tf.random.set_seed(0)
  noisy = agent_lib.action_noise(
      tf.constant(multi), 0.4, True, MULTI_PARTS).numpy()
  assert_valid(noisy, MULTI_PARTS)
  assert (noisy[:, :3].argmax(-1) != 0).mean() == pytest.approx(
      0.4 * 2 / 3, abs=0.03)
  assert (noisy[:, 3:].argmax(-1) != 0).mean() == pytest.approx(
      0.4 / 2, abs=0.03)
  mixed = np.tile(np.array([0.9, -0.9, 0, 0, 1], np.float32), (4000, 1))
  noisy = agent_lib.action_noise(
      tf.constant(mixed), 0.3, False, DICT_PARTS).numpy()
  assert_valid(noisy, DICT_PARTS)
  assert noisy[:, :2].std() > 0.1
  # Explore with the random behaviour: uniform per part.
  random = expl.Random(None, 5, DICT_PARTS, None, None, None)
  assert_valid(random.actor(tf.zeros([100, 8])).sample(), DICT_PARTS)


@pytest.mark.parametrize('behavior', ['greedy', 'plan2explore'])
def test_the_agent_trains_and_acts_per_part(behavior):
  space = envs.ActionParts(DICT_PARTS)
  config = H.tiny_config(
      expl_behavior=behavior, expl_noise=0.5, eval_noise=0.5,
      disag_action_cond=True)
  obs = H.obs_space(vector=5)
  tf.random.set_seed(0)
  agent = agent_lib.Agent(config, obs, {'action': space})
  metrics = agent.train(part_batch(obs, space))
  assert all(np.isfinite(float(v)) for v in metrics.values())
  step = {'state': np.zeros((4, 5), np.float32),
          'is_first': np.ones(4, bool)}
  for mode in ('train', 'eval', 'explore'):
    action, _ = agent.policy(step, mode=mode)
    assert_valid(action['action'], DICT_PARTS)


@pytest.mark.parametrize('env', list(ENVS))
def test_a_debug_run_trains_loads_and_acts_on_the_env(env, tmp_path):
  env_class, parts = ENVS[env]
  logdir = tmp_path / env
  config = api.defaults().update({
      **test_api.TINY, 'logdir': str(logdir), 'steps': 300, 'prefill': 100,
      'time_limit': 0, 'eval_every': 1000, 'log_every': 100})
  train_env = env_class()
  api.train(train_env, config)
  assert len(train_env.actions) >= 300  # All accepted by the env.
  metrics = test_api.read_metrics(logdir)
  for key in ('model_loss', 'actor_loss', 'actor_ent', 'critic_loss'):
    assert np.isfinite(metrics[key]), key
  loaded = api.load(logdir)
  assert loaded.act_space['action'].parts == parts
  inner = env_class()
  wrapped = envs.from_gym(inner)
  obs, state = wrapped.reset(), None
  for mode in ('eval', 'train', 'explore'):
    action, state = loaded.policy(obs, state, mode=mode)
    assert_valid(action['action'], parts)
    obs = wrapped.step(action)  # The env checks contains().
  assert len(inner.actions) == 3


ENV_MODULE = '''"""DictEnv of tests/test_actions.py as gym id TinyDict-v0."""
import gymnasium
import numpy as np

Spaces = gymnasium.spaces

{classes}

gymnasium.register('TinyDict-v0', entry_point=DictEnv)
'''


def test_train_py_and_eval_py_run_a_dict_action_task(tmp_path):
  module = ENV_MODULE.format(classes='\n\n'.join(
      inspect.getsource(c) for c in (TinyEnv, DictEnv)))
  (tmp_path / 'tiny_actions.py').write_text(module)
  path = os.pathsep.join(
      [str(tmp_path)] + os.environ.get('PYTHONPATH', '').split(os.pathsep))
  environ = {**os.environ, 'PYTHONPATH': path}
  logdir = tmp_path / 'run'
  flags = {**test_train.TINY, 'configs': 'defaults debug', 'jit': True,
           'task': 'gym_tiny_actions:TinyDict-v0', 'steps': 150,
           'time_limit': 0, 'eval_every': 1000, 'envs_parallel': 'process'}
  run = subprocess.run(
      test_train.command(logdir, flags), cwd=test_train.ROOT, env=environ,
      capture_output=True, text=True, timeout=300)
  assert run.returncode == 0, run.stdout + run.stderr
  result = subprocess.run(
      [sys.executable, 'dreamerv2/eval.py', '--logdir', str(logdir),
       '--episodes', '2'], cwd=test_train.ROOT, env=environ,
      capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stdout + result.stderr
  report = json.loads(result.stdout.strip().splitlines()[-1])
  assert [e['length'] for e in report['episodes']] == [10, 10]
