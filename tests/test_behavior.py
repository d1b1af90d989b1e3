"""Learning behaviours in imagination (paper, section 3): lambda-returns,
where the actor and critic gradients go, terminal weights, the slow critic,
exploration, the agent's update and policy, and schedules."""

import re
import threading

import numpy as np
import pytest
import tensorflow as tf

from common import choices
from common import tfutils
from dreamerv2 import agent as agent_lib

import dreamer_helpers as H

HORIZON = 5


@pytest.fixture(autouse=True)
def float32():
  with H.precision(32):
    yield


# Lambda returns --------------------------------------------------------------


def lambda_return_loop(reward, value, pcont, bootstrap, lambda_):
  """R_t = r_t + d_t ((1 - lambda) v_{t+1} + lambda R_{t+1}),
  R_T = bootstrap."""
  steps = len(reward)
  returns = np.zeros_like(reward)
  next_return = bootstrap
  for t in reversed(range(steps)):
    next_value = value[t + 1] if t + 1 < steps else bootstrap
    returns[t] = reward[t] + pcont[t] * (
        (1 - lambda_) * next_value + lambda_ * next_return)
    next_return = returns[t]
  return returns


def random_rollout(seed=0, steps=7, batch=5):
  rng = np.random.default_rng(seed)
  reward = rng.normal(size=(steps, batch)).astype(np.float32)
  value = rng.normal(size=(steps, batch)).astype(np.float32)
  pcont = rng.uniform(0.5, 1.0, (steps, batch)).astype(np.float32)
  bootstrap = rng.normal(size=batch).astype(np.float32)
  return reward, value, pcont, bootstrap


@pytest.mark.parametrize('lambda_', [0.95, 0.5])
def test_lambda_return_equals_the_recursive_definition(lambda_):
  reward, value, pcont, bootstrap = random_rollout()
  got = agent_lib.lambda_return(reward, value, pcont, bootstrap, lambda_)
  assert got.shape == (7, 5)
  np.testing.assert_allclose(
      got, lambda_return_loop(reward, value, pcont, bootstrap, lambda_),
      rtol=1e-5, atol=1e-5)


def test_lambda_one_is_the_discounted_monte_carlo_return_plus_bootstrap():
  reward, value, pcont, bootstrap = random_rollout(1)
  got = agent_lib.lambda_return(reward, value, pcont, bootstrap, 1.0).numpy()
  steps = len(reward)
  for t in range(steps):
    expected, discount = 0.0, 1.0
    for k in range(t, steps):
      expected = expected + discount * reward[k]
      discount = discount * pcont[k]
    expected = expected + discount * bootstrap
    np.testing.assert_allclose(got[t], expected, rtol=1e-5, atol=1e-5)


def test_lambda_zero_is_the_one_step_td_target():
  reward, value, pcont, bootstrap = random_rollout(2)
  got = agent_lib.lambda_return(reward, value, pcont, bootstrap, 0.0).numpy()
  next_value = np.concatenate([value[1:], bootstrap[None]], 0)
  np.testing.assert_allclose(
      got, reward + pcont * next_value, rtol=1e-6, atol=1e-6)


def assert_one_hot(action):
  # Straight-through samples: one_hot + probs - stop_gradient(probs) is 1 up to
  # rounding.
  action = np.asarray(action)
  np.testing.assert_allclose(
      action, np.eye(action.shape[-1])[action.argmax(-1)], atol=1e-6)


# Gradients in imagination ----------------------------------------------------


def imagination_setup(discrete=True, seed=0, **updates):
  """A world model, an actor-critic and start states from a replay batch."""
  config = H.tiny_config(imag_horizon=HORIZON, **updates)
  obs = H.obs_space(vector=5)
  act = H.act_space(discrete, 3)
  tf.random.set_seed(seed)
  tfstep = tf.Variable(0, dtype=tf.int64, trainable=False)
  wm = agent_lib.WorldModel(config, obs, 3, tfstep)
  ac = agent_lib.ActorCritic(config, 3, discrete, wm.feat_size, tfstep)
  data = H.batch(obs, act, 3, 6, seed=seed, terminal_at=(5,))
  _, outputs, _ = wm.loss(data)
  start = {k: tf.stop_gradient(v) for k, v in outputs['post'].items()}
  return config, wm, ac, start, data


def reward_fn(wm):
  return lambda seq: wm.heads['reward'](seq['feat']).mode()


def imagine_losses(wm, ac, start, data):
  """The actor and critic losses of one ActorCritic update, recorded on one
  persistent tape (so every path from every variable is visible)."""
  with tf.GradientTape(persistent=True) as tape:
    seq = wm.imagine(ac.actor, start, data['is_terminal'], HORIZON)
    seq['reward'], _ = ac.rewnorm(reward_fn(wm)(seq))
    target, _ = ac.target(seq)
    actor_loss, _ = ac.actor_loss(seq, target)
    critic_loss, _ = ac.critic_loss(seq, target)
  return tape, seq, actor_loss, critic_loss


def grad_norms(tape, loss, variables):
  grads = tape.gradient(loss, variables)
  return [0.0 if g is None else float(tf.norm(g)) for g in grads]


def others(ac, module):
  """Variables of the actor-critic outside `module` (the other networks,
  including the slow target critic)."""
  own = {id(v) for v in module.trainable_variables}
  return [v for v in ac.trainable_variables if id(v) not in own]


def test_reinforce_actor_loss_reaches_only_the_actor():
  _, wm, ac, start, data = imagination_setup(
      discrete=True, actor_grad='reinforce')
  tape, _, actor_loss, _ = imagine_losses(wm, ac, start, data)
  actor = grad_norms(tape, actor_loss, ac.actor.trainable_variables)
  assert min(actor) > 0
  assert max(grad_norms(tape, actor_loss, wm.trainable_variables)) == 0
  assert max(grad_norms(tape, actor_loss, others(ac, ac.actor))) == 0


@pytest.mark.parametrize('actor_grad', ['reinforce', 'both'])
def test_only_reinforce_stops_the_gradient_of_the_sampled_action(actor_grad):
  # The original's 'both' takes policy.log_prob(seq['action'][1:-1]) without
  # a stop-gradient: the straight-through gradient of the sampled action
  # reaches the log-probability. With mix 0 and no entropy bonus the actor
  # loss of 'both' is the reinforce term alone, so the two differ only there.
  _, wm, ac, start, data = imagination_setup(
      discrete=True, actor_grad=actor_grad, actor_grad_mix='0', actor_ent='0')
  tape, seq, actor_loss, _ = imagine_losses(wm, ac, start, data)
  grad = tape.gradient(actor_loss, seq['action'])
  norm = 0.0 if grad is None else float(tf.norm(grad))
  if actor_grad == 'reinforce':
    assert norm == 0.0
  else:
    assert norm > 0.0


def test_dynamics_backpropagation_reaches_the_actor_through_imagined_states():
  # No entropy bonus: the only path from the loss to the actor is
  # action -> next imagined state -> reward and value.
  _, wm, ac, start, data = imagination_setup(
      discrete=False, actor_grad='dynamics', actor_ent='0')
  tape, _, actor_loss, _ = imagine_losses(wm, ac, start, data)
  assert min(grad_norms(tape, actor_loss, ac.actor.trainable_variables)) > 0
  # It flows through the prior's transition (the optimizer updates only the
  # actor).
  assert max(grad_norms(tape, actor_loss, wm.rssm.trainable_variables)) > 0
  # The critic being trained is not part of the actor's objective.
  assert max(grad_norms(tape, actor_loss, ac.critic.trainable_variables)) == 0


@pytest.mark.parametrize(
    'discrete', [True, False], ids=['onehot', 'trunc_normal'])
def test_critic_loss_reaches_only_the_critic(discrete):
  _, wm, ac, start, data = imagination_setup(discrete=discrete)
  tape, _, _, critic_loss = imagine_losses(wm, ac, start, data)
  assert min(grad_norms(tape, critic_loss, ac.critic.trainable_variables)) > 0
  assert max(grad_norms(tape, critic_loss, wm.trainable_variables)) == 0
  assert max(grad_norms(tape, critic_loss, others(ac, ac.critic))) == 0


def test_steps_after_a_predicted_terminal_carry_no_weight():
  _, wm, ac, start, data = imagination_setup()
  # The discount head's output bias is its only variable of shape [1].
  heads = tfutils.named_variables(wm.heads['discount'])
  out_bias = [v for v in heads.values() if tuple(v.shape) == (1,)]
  assert len(out_bias) == 1
  out_bias[0].assign([-50.0])                    # predicted discount ~ 2e-22
  seq = wm.imagine(ac.actor, start, data['is_terminal'], HORIZON)
  weight = seq['weight'].numpy()                 # [H + 1, B * T]
  assert weight.shape == (HORIZON + 1, 3 * 6)
  np.testing.assert_array_equal(weight[0], 1.0)
  # The first discount is the replay's: 0.99 unless the start state is terminal.
  terminal = data['is_terminal'].numpy().reshape(-1)
  np.testing.assert_allclose(
      weight[1], np.where(terminal, 0.0, 0.99), rtol=1e-6)
  assert np.abs(weight[2:]).max() < 1e-20
  # The critic ignores those steps: rewards of 1000 there change nothing.
  reward = reward_fn(wm)(seq)
  losses = []
  for late in (0.0, 1e3):
    seq['reward'] = tf.concat(
        [reward[:2], tf.fill(tf.shape(reward[2:]), late)], 0)
    target, _ = ac.target(seq)
    losses.append(float(ac.critic_loss(seq, target)[0]))
  assert losses[1] == pytest.approx(losses[0], rel=1e-5)


def test_discounts_are_predicted_after_the_first_step():
  _, wm, ac, start, data = imagination_setup()
  seq = wm.imagine(ac.actor, start, data['is_terminal'], HORIZON)
  disc, weight = seq['discount'].numpy(), seq['weight'].numpy()
  expected = np.cumprod(
      np.concatenate([np.ones_like(disc[:1]), disc[:-1]], 0), 0)
  np.testing.assert_allclose(weight, expected, rtol=1e-6)
  assert seq['feat'].shape == (HORIZON + 1, 18, wm.feat_size)
  assert seq['action'].shape == (HORIZON + 1, 18, 3)
  np.testing.assert_array_equal(seq['action'][0], 0.0)


# The slow target critic ------------------------------------------------------


def critic_pairs(ac):
  """[(critic variable, slow target variable)] matched by their path."""
  named = {n: v for n, v in tfutils.named_variables(ac).items()
           if '_opt/' not in n}
  critic_ids = {id(v) for v in ac.critic.variables}
  critic = {n: v for n, v in named.items() if id(v) in critic_ids}
  slow = {n: v for n, v in named.items() if 'target' in n.split('/')[0]}
  pairs = []
  for name, var in critic.items():
    suffix = name.split('/', 1)[1]
    match = [v for n, v in slow.items() if n.split('/', 1)[1] == suffix]
    assert len(match) == 1, name
    pairs.append((var, match[0]))
  return pairs


def test_slow_critic_is_copied_every_slow_target_update_updates():
  _, wm, ac, start, data = imagination_setup(slow_target_update=2)
  pairs = critic_pairs(ac)
  assert len(pairs) == len(ac.critic.variables) > 0
  equal = []
  for _ in range(5):
    ac.train(wm, start, data['is_terminal'], reward_fn(wm))
    equal.append(all(np.array_equal(c.numpy(), s.numpy()) for c, s in pairs))
  # Updates 0, 2, 4 end with a copy; after 1 and 3 the critic has moved on.
  assert equal == [True, False, True, False, True]


# Exploration -----------------------------------------------------------------


@pytest.mark.parametrize('norm', ['none', 'layer'])
def test_stacked_ensemble_equals_its_members_as_separate_mlps(norm):
  # The ensemble's batched matmuls compute what the original's K separate
  # expl_head MLPs (Dense -> norm -> elu, then a Dense mean) compute.
  from common import nets
  from dreamerv2 import expl
  tf.random.set_seed(0)
  ensemble = expl.Ensemble(3, 5, 4, layers=2, units=8, norm=norm)
  for var in ensemble.scales + ensemble.offsets + ensemble.biases:
    var.assign(tf.random.normal(var.shape))
  x = tf.random.stateless_normal([2, 6, 5], [0, 1])
  preds = ensemble(x).numpy()                                # [K, 2, 6, 4]
  assert preds.shape == (3, 2, 6, 4)
  for k in range(3):
    mlp = nets.MLP(5, 4, layers=2, units=8, norm=norm)
    for i, (layer, layer_norm) in enumerate(
        zip(mlp.stack.layers, mlp.stack.norms)):
      layer.kernel.assign(ensemble.kernels[i][k])
      layer.bias.assign(ensemble.biases[i][k, 0])
      if norm == 'layer':
        layer_norm.scale.assign(ensemble.scales[i][k, 0])
        layer_norm.offset.assign(ensemble.offsets[i][k, 0])
    mlp.head.out.kernel.assign(ensemble.kernels[2][k])
    mlp.head.out.bias.assign(ensemble.biases[2][k, 0])
    np.testing.assert_allclose(
        preds[k], mlp(x).mode().numpy(), rtol=1e-5, atol=1e-5)


def test_plan2explore_takes_the_expl_heads_norm():
  config = H.tiny_config(
      expl_behavior='plan2explore', **{'expl_head.norm': 'layer'})
  agent = agent_lib.Agent(config, H.obs_space(vector=5), H.act_space(True, 3))
  names = [n for n in tfutils.named_variables(agent) if '/ensemble/' in n]
  assert any('scale' in n for n in names) and any('offset' in n for n in names)


def test_plan2explore_reward_is_zero_when_members_agree_grows_with_spread():
  # A frozen ensemble (learning rate 0) so the reward is that of the set
  # weights.
  config = H.tiny_config(
      expl_behavior='plan2explore', expl_opt={'lr': 0.0, 'wd': 0.0})
  obs, act = H.obs_space(vector=5), H.act_space(True, 3)
  tf.random.set_seed(0)
  agent = agent_lib.Agent(config, obs, act)
  data = H.batch(obs, act, 3, 6)
  named = tfutils.named_variables(agent)
  members = {n: v for n, v in named.items() if '/ensemble/' in n}
  # disag_models
  assert members and all(v.shape[0] == 3 for v in members.values())
  # Members differ only in the last layer's kernel; everything else is shared,
  # so the predictions of member k are shared + spread * (W_k - W_0) h.
  layer = lambda name: int(re.search(r'(\d+)$', name).group(1))
  last = max(layer(n) for n in members)
  spread_kernel = [n for n in members if layer(n) == last and 'kernel' in n]
  assert len(spread_kernel) == 1
  spread_kernel = spread_kernel[0]
  original = members[spread_kernel].numpy().copy()
  for name, var in members.items():
    var.assign(np.repeat(var.numpy()[:1], 3, 0))
  initial = H.snapshot(agent)
  rewards = {}
  for spread in (0.0, 0.5, 1.0, 2.0):
    for name, value in initial.items():
      named[name].assign(value)
    members[spread_kernel].assign(
        original[:1] + spread * (original - original[:1]))
    tf.random.set_seed(1)
    metrics = agent.train(data)
    rewards[spread] = float(metrics['expl_reward_mean'])
  assert abs(rewards[0.0]) < 1e-6 * rewards[1.0]
  assert rewards[1.0] > 1e-3
  assert rewards[0.5] / rewards[1.0] == pytest.approx(0.5, rel=1e-3)
  assert rewards[2.0] / rewards[1.0] == pytest.approx(2.0, rel=1e-3)


@pytest.mark.parametrize('behavior', list(choices.EXPL_BEHAVIORS))
def test_each_exploration_behavior_trains_and_acts(behavior):
  # Every value train.py accepts (common/choices.py) builds, trains and acts.
  config = H.tiny_config(expl_behavior=behavior)
  obs, act = H.obs_space(vector=5), H.act_space(True, 3)
  tf.random.set_seed(0)
  agent = agent_lib.Agent(config, obs, act)
  metrics = agent.train(H.batch(obs, act, 3, 6))
  assert all(np.isfinite(float(v)) for v in metrics.values())
  expl = sorted(k for k in metrics if k.startswith('expl_'))
  if behavior.lower().replace('_', '') in ('plan2explore', 'modelloss'):
    assert {'expl_actor_loss', 'expl_critic_loss',
            'expl_reward_mean'} <= set(expl), expl
    own = ('expl_ensemble_loss' if behavior.lower() == 'plan2explore'
           else 'expl_intr_head_loss')
    assert own in expl and not any(
        k.startswith('expl_expl_') for k in expl), expl
  else:
    assert expl == []
  obs_step = {'state': np.zeros((2, 5), np.float32),
              'is_first': np.ones(2, bool)}
  action, _ = agent.policy(obs_step, mode='explore')
  assert_one_hot(action['action'])


# The agent's update ----------------------------------------------------------

METRICS = (
    'model_loss', 'kl_loss', 'image_loss', 'reward_loss', 'discount_loss',
    'model_kl', 'prior_ent', 'post_ent', 'actor_loss', 'actor_ent',
    'actor_ent_scale', 'critic_loss', 'critic', 'critic_slow',
    'critic_target', 'reward_mean', 'reward_std', 'model_grad_norm',
    'model_loss_scale', 'actor_grad_norm', 'critic_grad_norm')


def network_snapshot(agent, pattern):
  """The trainable variables on paths matching `pattern` (optimizer
  parameter lists and the slow critic left out)."""
  named = tfutils.named_variables(agent)
  trainable = {id(v) for v in agent.trainable_variables}
  return {n: v.numpy().copy() for n, v in named.items()
          if id(v) in trainable and re.search(pattern, n)
          and '_opt/' not in n and 'target' not in n}


@pytest.mark.parametrize(
    'discrete', [True, False], ids=['onehot', 'trunc_normal'])
def test_agent_update_reports_the_metrics_and_trains_model_actor_and_critic(
    discrete):
  # No weight decay: a weight changes only if its gradient reached it.
  nodecay = {'wd': 0.0}
  config = H.tiny_config(
      model_opt=nodecay, actor_opt=nodecay, critic_opt=nodecay)
  obs, act = H.obs_space(image=(64, 64, 1)), H.act_space(discrete, 3)
  tf.random.set_seed(0)
  agent = agent_lib.Agent(config, obs, act)
  parts = {'model': r'^wm/', 'actor': r'(^|/)actor/', 'critic': r'(^|/)critic/'}
  before = {part: network_snapshot(agent, pattern)
            for part, pattern in parts.items()}
  assert all(len(b) > 0 for b in before.values())
  metrics = agent.train(H.batch(obs, act, 3, 6, terminal_at=(5,)))
  missing = [k for k in METRICS if k not in metrics]
  assert missing == []
  bad = {k: float(v) for k, v in metrics.items() if not np.isfinite(float(v))}
  assert bad == {}
  assert float(metrics['actor_ent_scale']) == pytest.approx(2e-3)
  assert float(metrics['model_loss_scale']) == 1.0  # float32: no scaling
  for part, snapshot in before.items():
    assert H.unchanged(snapshot, agent) == [], part


# Acting ----------------------------------------------------------------------


def test_policy_is_traced_once_per_mode_across_episode_starts_and_ends():
  config = H.tiny_config(jit=True)
  obs, act = H.obs_space(image=(64, 64, 1)), H.act_space(True, 3)
  tf.random.set_seed(0)
  agent = agent_lib.Agent(config, obs, act)
  rng = np.random.default_rng(0)
  def observation(first):
    return {'image': rng.integers(0, 256, (2, 64, 64, 1)).astype(np.uint8),
            'reward': np.zeros(2, np.float32),
            'is_first': np.array([first, False]),
            'is_last': np.zeros(2, bool), 'is_terminal': np.zeros(2, bool)}
  modes = ('train', 'eval', 'explore')
  for mode in modes:          # warm up: a start, then a step
    _, state = agent.policy(observation(True), None, mode)
    _, state = agent.policy(observation(False), state, mode)
  traces = agent._policy.experimental_get_tracing_count()
  assert traces == len(modes)  # one trace per mode
  state = None
  for i in range(12):
    action, state = agent.policy(observation(i % 4 == 0), state, modes[i % 3])
    assert_one_hot(action['action'])
  assert agent._policy.experimental_get_tracing_count() == traces


def test_action_noise_replaces_one_hot_actions_and_perturbs_continuous_ones():
  action = tf.one_hot(tf.zeros([4000], tf.int32), 4)
  tf.random.set_seed(0)
  noisy = agent_lib.action_noise(action, 0.4, discrete=True).numpy()
  np.testing.assert_array_equal(noisy.sum(-1), 1.0)
  # Replaced with probability 0.4 by a uniform action (which is 0 a quarter of
  # the time).
  assert (noisy.argmax(-1) != 0).mean() == pytest.approx(0.4 * 0.75, abs=0.03)
  assert agent_lib.action_noise(action, 0.0, discrete=True) is action
  continuous = agent_lib.action_noise(
      tf.fill([4000, 2], 0.9), 0.3, discrete=False).numpy()
  assert continuous.max() <= 1.0 and continuous.min() >= -1.0
  assert continuous.std() > 0.1


# Schedules -------------------------------------------------------------------


def at(schedule, steps):
  return [float(schedule(tf.constant(step, tf.int64))) for step in steps]


def test_schedules_parse_constants_linear_and_warmup():
  assert at(tfutils.schedule('1e-3'), [0, 10 ** 6]) == pytest.approx(
      [1e-3, 1e-3])
  assert at(tfutils.schedule('linear(1,0,10)'), [0, 5, 10, 20]) == (
      pytest.approx([1, 0.5, 0, 0]))
  # warmup(duration, value), in the original's order.
  assert at(tfutils.schedule('warmup(100,1e-3)'), [0, 50, 100, 200]) == (
      pytest.approx([0, 5e-4, 1e-3, 1e-3]))
  assert at(tfutils.schedule(' linear(0.1, 0.3, 100) '), [50]) == (
      pytest.approx([0.2]))


@pytest.mark.parametrize(
    'bad', ['fast', 'linaer(1,0,10)', 'linear(1,0)', 'linear(a,b,c)', ''])
def test_a_bad_schedule_raises_naming_it(bad):
  with pytest.raises(ValueError) as info:
    tfutils.schedule(bad)
  assert repr(bad) in str(info.value)


def test_exp_and_horizon_schedules():
  # exp(initial, final, halflife): halfway to final every halflife steps.
  assert at(tfutils.schedule('exp(1,0,10)'), [0, 10, 20]) == pytest.approx(
      [1, 0.5, 0.25])
  assert at(tfutils.schedule('exp(3,1,5)'), [5]) == pytest.approx([2])
  # horizon(initial, final, duration): a discount 1 - 1/h for a horizon h
  # moving linearly from initial to final.
  horizon = tfutils.schedule('horizon(10,100,100)')
  assert at(horizon, [0, 50, 100, 200]) == pytest.approx(
      [0.9, 1 - 1 / 55, 0.99, 0.99])


# Reward normalisation -------------------------------------------------------


def test_stream_norm_divides_by_a_running_mean_of_magnitudes():
  norm = tfutils.StreamNorm(momentum=0.5, scale=2.0, eps=0.0)
  out, metrics = norm(tf.constant([2.0, -2.0]))
  # mag = 0.5 * 1 + 0.5 * mean(|x|) = 1.5; out = x / 1.5 * scale.
  assert float(norm.mag) == pytest.approx(1.5)
  np.testing.assert_allclose(
      out.numpy(), [2 / 1.5 * 2, -2 / 1.5 * 2], rtol=1e-6)
  assert (float(metrics['mean']) == 0.0
          and float(metrics['std']) == pytest.approx(2.0))
  out, _ = norm(tf.constant([6.0, 6.0]))
  assert float(norm.mag) == pytest.approx(0.5 * 1.5 + 0.5 * 6)
  off = tfutils.StreamNorm(momentum=1.0)  # The default: no normalisation.
  np.testing.assert_allclose(
      off(tf.constant([3.0]))[0].numpy(), [3.0], rtol=1e-6)


# Action distributions --------------------------------------------------------


def test_trunc_normal_clips_inside_the_bounds_with_straight_through_gradients():
  from tensorflow_probability import distributions as tfd
  from common import dists
  # An event on (or beyond) the bounds comes out 1e-6 inside them, and its
  # gradient passes through the clip as if it were not there.
  dist = dists.TruncNormal(tf.zeros(3), tf.ones(3))
  event = tf.Variable([1.0, -1.0, 0.3])
  with tf.GradientTape() as tape:
    clipped = dist._clipped(event * 1.0)
    loss = tf.reduce_sum(clipped * tf.constant([1.0, 2.0, 3.0]))
  np.testing.assert_allclose(
      clipped.numpy(), [1 - 1e-6, -1 + 1e-6, 0.3], atol=1e-7)
  assert float(clipped[0]) < 1.0 and float(clipped[1]) > -1.0
  np.testing.assert_allclose(tape.gradient(loss, event).numpy(), [1, 2, 3])
  # The mode is TFP's TruncatedNormal mode, the location clipped to the
  # bounds (the original overrides only `sample`), not the truncated mean.
  mean, std = tf.constant([0.2, 0.9, 1.0]), tf.constant([0.3, 2.0, 0.5])
  mode = dists.TruncNormal(mean, std).mode().numpy()
  np.testing.assert_array_equal(mode, mean.numpy())
  truncated_mean = tfd.TruncatedNormal(mean, std, -1.0, 1.0).mean().numpy()
  assert truncated_mean[1] < 0.5  # A wide std pulls the mean towards 0.
  tf.random.set_seed(0)
  samples = tf.stack([
      dists.TruncNormal(tf.fill([200], 0.99), tf.fill([200], 0.5)).sample()
      for _ in range(5)])
  assert float(tf.reduce_max(samples)) <= 1 - 1e-6
  assert float(tf.reduce_min(samples)) >= -1 + 1e-6


def test_continuous_eval_action_is_tanh_of_the_actor_heads_mean():
  obs, act = H.obs_space(vector=5), H.act_space(False, 3)
  tf.random.set_seed(0)
  agent = agent_lib.Agent(H.tiny_config(eval_state_mean=True), obs, act)
  outputs, (latent, _) = agent.policy(observation(4), None, 'eval')
  actor = agent._task_behavior.actor
  # The head's mean output, before tanh. Its std starts near 1.1, where the
  # truncated Normal's mean lies well inside tanh(out).
  head_mean = actor.head.out(actor.stack(agent.wm.rssm.get_feat(latent)))
  np.testing.assert_allclose(
      outputs['action'].numpy(), np.tanh(head_mean.numpy()), rtol=1e-5,
      atol=1e-6)


def test_tanh_normal_mode_is_the_likeliest_of_its_samples():
  from common import dists
  tf.random.set_seed(0)
  mean, std = tf.constant([[0.3, -2.0]]), tf.constant([[-6.0, -6.0]])
  dist = dists.tanh_normal(mean, std, min_std=0.01)
  mode = dist.mode().numpy()
  # A narrow Normal: the mode sits at tanh of the squashed mean, inside (-1, 1).
  center = np.tanh(5 * np.tanh(mean.numpy() / 5))
  np.testing.assert_allclose(mode, center, atol=0.05)
  assert np.abs(mode).max() < 1
  # No other sample is more likely than the chosen one, by construction.
  samples = dist.sample()
  assert float(dist.log_prob(mode)[0]) >= float(dist.log_prob(samples)[0]) - 1.0


def test_tanh_normal_gives_an_action_on_the_bound_a_finite_log_prob():
  # The original's TanhBijector clips y to +-0.99999997 before atanh; TFP's
  # Tanh would give atanh(1) = inf.
  from common import dists
  dist = dists.tanh_normal(
      tf.zeros([1, 2]), tf.zeros([1, 2]), min_std=0.1)
  assert np.isfinite(float(dist.log_prob(tf.constant([[1.0, -1.0]]))[0]))
  inside = tf.constant([[0.3, -0.5]])
  from tensorflow_probability import bijectors as tfb
  from tensorflow_probability import distributions as tfd
  plain = tfd.Independent(tfd.TransformedDistribution(
      tfd.Normal(tf.zeros([1, 2]), tf.nn.softplus(tf.zeros([1, 2])) + 0.1),
      tfb.Tanh()), 1)
  np.testing.assert_allclose(
      dist.log_prob(inside).numpy(), plain.log_prob(inside).numpy(), rtol=1e-6)


# Policy options --------------------------------------------------------------


def observation(batch=1, first=True, seed=0):
  rng = np.random.default_rng(seed)
  return {'state': rng.normal(size=(batch, 5)).astype(np.float32),
          'is_first': np.full(batch, first)}


def test_eval_state_mean_makes_the_eval_latent_deterministic():
  obs, act = H.obs_space(vector=5), H.act_space(True, 3)
  for state_mean in (True, False):
    tf.random.set_seed(0)
    agent = agent_lib.Agent(H.tiny_config(eval_state_mean=state_mean), obs, act)
    latents = [
        agent.policy(observation(64), None, 'eval')[1][0]['stoch'].numpy()
        for _ in range(2)]
    same = np.array_equal(*latents)
    assert same == state_mean, state_mean
    # Training always samples its latent; as in the original, exploring
    # takes the posterior's mode with eval_state_mean, as evaluating does.
    train = [agent.policy(observation(64), None, 'train')[1][0]['stoch'].numpy()
             for _ in range(2)]
    assert not np.array_equal(*train)
    explore = [
        agent.policy(observation(64), None, 'explore')[1][0]['stoch'].numpy()
        for _ in range(2)]
    assert np.array_equal(*explore) == state_mean, state_mean


def test_eval_noise_replaces_the_eval_action():
  obs, act = H.obs_space(vector=5), H.act_space(True, 3)
  for noise in (0.0, 1.0):
    tf.random.set_seed(0)
    agent = agent_lib.Agent(
        H.tiny_config(eval_noise=noise, eval_state_mean=True), obs, act)
    # The same observation in every row: without noise the same action.
    obs_same = {k: np.repeat(v[:1], 300, 0)
                for k, v in observation(300).items()}
    actions = agent.policy(
        obs_same, None, 'eval')[0]['action'].numpy().argmax(-1)
    assert (len(set(actions)) == 1) == (noise == 0.0), (noise, set(actions))
    if noise:
      assert set(actions) == {0, 1, 2}


def test_expl_until_explores_until_that_many_frames(tmp_path):
  from dreamerv2 import loop
  import gymnasium
  from common import envs
  config = H.tiny_config(**{
      'logdir': str(tmp_path), 'expl_until': 400, 'action_repeat': 4,
      'expl_behavior': 'random'})
  env = envs.from_gym(gymnasium.make('CartPole-v1'))
  training = loop.Training(
      config, tmp_path, [env], [], [], threading.Event())
  modes = []
  training.agent.policy = lambda obs, state, mode: (
      modes.append(mode), ({}, None))[1]
  for step in (0, 99, 100, 500):  # 400 frames = 100 agent steps.
    training.step.value = step
    training.train_policy({}, None)
  assert modes == ['explore', 'explore', 'train', 'train']


# The optimizer ---------------------------------------------------------------


def numpy_adam(params, grads, state, lr, eps, clip, wd, beta1=0.9, beta2=0.999):
  """One step of the paper's optimizer in NumPy (float64): global-norm clip,
  decoupled weight decay, then Adam with bias correction."""
  norm = np.sqrt(sum((g ** 2).sum() for g in grads))
  if clip and norm > clip:
    grads = [g * clip / norm for g in grads]
  state['t'] += 1
  t = state['t']
  out = []
  for i, (p, g) in enumerate(zip(params, grads)):
    p = p * (1 - wd)
    state['m'][i] = beta1 * state['m'][i] + (1 - beta1) * g
    state['v'][i] = beta2 * state['v'][i] + (1 - beta2) * g ** 2
    lr_t = lr * np.sqrt(1 - beta2 ** t) / (1 - beta1 ** t)
    out.append(p - lr_t * state['m'][i] / (np.sqrt(state['v'][i]) + eps))
  return out, norm


def test_optimizer_step_equals_a_numpy_reference_with_clipping_and_decay():
  rng = np.random.default_rng(0)
  values = [rng.normal(size=(5, 3)), rng.normal(size=(3,))]
  params = [tf.Variable(v.astype(np.float32)) for v in values]
  opt = tfutils.Optimizer('test', params, lr=1e-2, eps=1e-5, clip=2.0, wd=1e-2)
  state = {'t': 0, 'm': [np.zeros_like(v) for v in values],
           'v': [np.zeros_like(v) for v in values]}
  expected = [v.astype(np.float64) for v in values]
  # A large gradient (clipped to norm 2) and then a small one (not clipped).
  for scale in (10.0, 0.1):
    targets = [rng.normal(size=v.shape) for v in values]
    with tf.GradientTape() as tape:
      loss = sum(tf.reduce_sum(p * t.astype(np.float32) * scale)
                 for p, t in zip(params, targets))
    metrics = opt(tape, loss)
    grads = [t * scale for t in targets]
    expected, norm = numpy_adam(expected, grads, state, 1e-2, 1e-5, 2.0, 1e-2)
    assert float(metrics['test_grad_norm']) == pytest.approx(norm, rel=1e-5)
    for param, want in zip(params, expected):
      np.testing.assert_allclose(param.numpy(), want, rtol=1e-5, atol=1e-6)
  assert int(opt.updates) == 2 and int(opt.skipped) == 0
