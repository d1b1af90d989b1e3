"""The world model's update, its loss as the paper writes it, and the
checkpoint that resumes a run (paper, section 2; REFERENCE sections 1, 2, 5)."""

import re

import numpy as np
import pytest
import tensorflow as tf

from common import config as config_lib
from common import tfutils
from dreamerv2 import agent as agent_lib
from bench import probes

import dreamer_helpers as H



@pytest.fixture(autouse=True)
def float32():
  with H.precision(32):
    yield


def make_agent(config, obs, act, seed=0):
  tf.random.set_seed(seed)
  return agent_lib.Agent(config, obs, act)


# The update ------------------------------------------------------------------


def test_one_model_update_changes_every_world_model_weight():
  # Image and vector observations, so both encoder and decoder paths are used;
  # no weight decay, so a weight changes only if its gradient is nonzero.
  config = H.tiny_config(**{'model_opt.wd': 0.0})
  obs, act = H.obs_space(image=(64, 64, 1), vector=5), H.act_space(True, 3)
  wm = agent_lib.WorldModel(
      config, obs, 3, tf.Variable(0, dtype=tf.int64, trainable=False))
  data = H.batch(obs, act, 3, 6, terminal_at=(5,))
  before = H.trainable_snapshot(wm)
  assert len(before) == len(wm.trainable_variables) > 40
  _, metrics = wm.train(data)
  assert H.unchanged(before, wm) == []
  assert np.isfinite(float(metrics['model_loss']))
  assert int(wm.model_opt.updates) == 1 and int(wm.model_opt.skipped) == 0


def test_an_ensemble_of_prior_heads_trains_each_member_and_keeps_them_apart():
  # rssm.ensemble 3, as the original's EnsembleRSSM: each prior step uses one
  # member at random, so over 6 steps x 5 updates every member gets gradients.
  config = H.tiny_config(**{'rssm.ensemble': 3, 'model_opt.wd': 0.0})
  obs, act = H.obs_space(vector=5), H.act_space(True, 3)
  wm = agent_lib.WorldModel(
      config, obs, 3, tf.Variable(0, dtype=tf.int64, trainable=False))
  rssm = wm.rssm
  heads = [rssm.img_dist] + [dist for _, _, dist in rssm.img_members]
  assert len(heads) == 3
  before = [head.kernel.numpy().copy() for head in heads]
  tf.random.set_seed(1)
  for seed in range(5):
    wm.train(H.batch(obs, act, 3, 6, seed=seed))
  after = [head.kernel.numpy() for head in heads]
  for old, new in zip(before, after):
    assert not np.array_equal(old, new)
  for i in range(3):
    for j in range(i + 1, 3):
      assert np.abs(after[i] - after[j]).max() > 1e-3
  # The prior of an imagined step is one member's: over many draws, each
  # member's logits come out, and only those.
  state = rssm.initial(2)
  action = tf.one_hot([0, 1], 3)
  deter = rssm.img_step(state, action)['deter']
  members = [rssm._stats(rssm._hidden(rssm.img_out(deter), rssm.img_out_norm),
                         rssm.img_dist)['logit']]
  members += [rssm._stats(rssm._hidden(out(deter), norm), dist)['logit']
              for out, norm, dist in rssm.img_members]
  seen = set()
  for _ in range(40):
    logit = rssm.img_step(state, action)['logit']
    (index,) = [k for k, m in enumerate(members) if np.allclose(logit, m)]
    seen.add(index)
  assert seen == {0, 1, 2}


def test_one_prior_head_keeps_the_checkpoint_names_of_earlier_runs():
  config = H.tiny_config()
  assert config.rssm.ensemble == 1
  obs = H.obs_space(vector=5)
  wm = agent_lib.WorldModel(
      config, obs, 3, tf.Variable(0, dtype=tf.int64, trainable=False))
  names = set(tfutils.named_variables(wm))
  assert {'rssm/img_dist/kernel', 'rssm/img_out/kernel'} <= names
  assert not any('img_members' in name for name in names)


def test_model_loss_is_the_scaled_sum_of_kl_and_head_losses():
  # Atari scales: kl 0.1, discount 5, image and reward 1.
  config = H.tiny_config('atari')
  assert dict(config.loss_scales) == {
      'kl': 0.1, 'reward': 1.0, 'discount': 5.0, 'proprio': 1.0}
  obs, act = H.obs_space(image=(64, 64, 1)), H.act_space(True, 3)
  wm = agent_lib.WorldModel(
      config, obs, 3, tf.Variable(0, dtype=tf.int64, trainable=False))
  loss, outputs, metrics = wm.loss(H.batch(obs, act, 2, 4))
  m = {k: float(v) for k, v in metrics.items()}
  expected = (0.1 * m['kl_loss'] + m['image_loss'] + m['reward_loss']
              + 5.0 * m['discount_loss'])
  assert float(loss) == pytest.approx(expected, rel=1e-6)
  # The image is a unit-variance Normal per pixel, summed over 64x64x1: at
  # least the Normal's constant 0.5 log(2 pi) per pixel.
  assert m['image_loss'] > 64 * 64 * 0.5 * np.log(2 * np.pi)
  assert outputs['feat'].shape == (2, 4, 4 * 4 + 16)  # stoch x discrete + deter
  assert m['model_kl'] == pytest.approx(
      float(tf.reduce_mean(outputs['kl'])), rel=1e-6)


def test_head_targets_are_tanh_reward_discount_if_not_terminal_centred_image():
  config = H.tiny_config('atari')
  obs, act = H.obs_space(image=(64, 64, 1)), H.act_space(True, 3)
  wm = agent_lib.WorldModel(
      config, obs, 3, tf.Variable(0, dtype=tf.int64, trainable=False))
  data = H.batch(obs, act, 1, 3, terminal_at=(2,))
  data['reward'] = tf.constant([[0.0, 2.0, -10.0]])
  targets = wm.preprocess(data)
  np.testing.assert_allclose(
      targets['reward'], [[0.0, np.tanh(2.0), np.tanh(-10.0)]], rtol=1e-6)
  np.testing.assert_allclose(
      targets['discount'], [[0.999, 0.999, 0.0]], rtol=1e-6)
  np.testing.assert_allclose(
      targets['image'], data['image'].numpy() / 255 - 0.5, atol=1e-6)


@pytest.mark.parametrize(
    'grad_heads', [('decoder', 'reward', 'discount'), ('decoder',)])
def test_only_grad_heads_shape_the_representation(grad_heads):
  config = H.tiny_config(grad_heads=list(grad_heads))
  obs, act = H.obs_space(image=(64, 64, 1)), H.act_space(True, 3)
  wm = agent_lib.WorldModel(
      config, obs, 3, tf.Variable(0, dtype=tf.int64, trainable=False))
  representation = wm.encoder.trainable_variables + wm.rssm.trainable_variables
  with tf.GradientTape(persistent=True) as tape:
    _, _, metrics = wm.loss(H.batch(obs, act, 2, 4))
  for head in ('reward', 'discount'):
    grads = tape.gradient(metrics[f'{head}_loss'], representation)
    norm = sum(0.0 if g is None else float(tf.norm(g)) for g in grads)
    if head in grad_heads:
      assert norm > 0, head
    else:
      assert norm == 0, head
    # The head itself always learns.
    head_grads = tape.gradient(
        metrics[f'{head}_loss'], wm.heads[head].trainable_variables)
    assert all(g is not None and float(tf.norm(g)) > 0
               for g in head_grads), head


# Checkpoints -----------------------------------------------------------------


def trained_agent(config, obs, act, steps=2, seed=0):
  agent = make_agent(config, obs, act, seed)
  data = H.batch(obs, act, 3, 6, seed=seed, terminal_at=(5,))
  for _ in range(steps):
    agent.train(data)
  return agent, data


def test_checkpoint_round_trips_weights_and_optimizer_state_bit_exactly(
    tmp_path):
  config = H.tiny_config()
  obs, act = H.obs_space(image=(64, 64, 1)), H.act_space(True, 3)
  agent, data = trained_agent(config, obs, act, steps=2)
  saved = H.snapshot(agent)
  path = tmp_path / 'variables.pkl'
  tfutils.save_checkpoint(agent, path)
  fresh = make_agent(config, obs, act, seed=1)
  differ = [n for n, v in H.snapshot(fresh).items()
            if not np.array_equal(v, saved[n])]
  assert len(differ) > 100  # weights, Adam moments and counters all differ
  tfutils.load_checkpoint(fresh, path)
  restored = H.snapshot(fresh)
  assert sorted(restored) == sorted(saved)
  assert [n for n in saved if not np.array_equal(saved[n], restored[n])] == []
  # The optimizer state is in there: Adam moments and the step counters.
  named = tfutils.named_variables(fresh)
  counters = {n: int(v) for n, v in named.items() if n.endswith('_opt/updates')}
  # model, actor, critic
  assert len(counters) >= 3 and set(counters.values()) == {2}, counters
  optimizer_state = [n for n in named if re.search(r'_opt/(m|v)/\d+$', n)]
  assert len(optimizer_state) >= 2 * len(agent.wm.trainable_variables)
  assert all(np.abs(named[n].numpy()).sum() > 0 for n in optimizer_state
             if n.startswith('wm/'))
  # Resuming continues exactly where the saved run would have gone.
  tf.random.set_seed(7)
  agent.train(data)
  tf.random.set_seed(7)
  fresh.train(data)
  after, resumed = H.snapshot(agent), H.snapshot(fresh)
  assert [n for n in after if not np.array_equal(after[n], resumed[n])] == []


def test_checkpoint_of_another_model_size_raises_a_mismatch_naming_the_variable(
    tmp_path):
  obs, act = H.obs_space(image=(64, 64, 1)), H.act_space(True, 3)
  small = make_agent(H.tiny_config(), obs, act)
  path = tmp_path / 'variables.pkl'
  tfutils.save_checkpoint(small, path)
  bigger = make_agent(H.tiny_config(**{'rssm.deter': 24}), obs, act)
  shapes = {n: tuple(v.shape)
            for n, v in tfutils.named_variables(small).items()}
  differ = [n for n, v in tfutils.named_variables(bigger).items()
            if n in shapes and tuple(v.shape) != shapes[n]]
  assert differ
  before = H.snapshot(bigger)
  with pytest.raises(tfutils.CheckpointMismatch) as info:
    tfutils.load_checkpoint(bigger, path)
  message = str(info.value)
  assert any(name in message for name in differ), message
  assert str(path) in message and '\n' not in message
  listed = message.split('changed?): ')[1]
  assert listed.startswith('wm/'), message  # The world model's sizes first.
  assert H.unchanged(before, bigger) == sorted(before)  # nothing half-loaded


def test_agent_checkpoint_holds_every_variable(tmp_path):
  import pickle
  config = H.tiny_config(expl_behavior='plan2explore')
  obs, act = H.obs_space(vector=5), H.act_space(False, 2)
  agent = make_agent(config, obs, act)
  assert len(agent.trainable_variables) > 50
  path = tmp_path / 'variables.pkl'
  tfutils.save_checkpoint(agent, path)
  with open(path, 'rb') as f:
    values = pickle.load(f)
  named = tfutils.named_variables(agent)
  assert set(values) == set(named)
  checkpointed = {id(named[n]) for n in values}
  missing = [v.name for v in agent.variables if id(v) not in checkpointed]
  assert missing == []
  assert {id(v) for v in agent.trainable_variables} <= checkpointed


# Atari size ------------------------------------------------------------------


def test_atari_sized_agent_trains_under_tf_function_and_model_loss_decreases():
  # 64x64x1 images, 18 actions, batch 16 x 50, deter 600: the speed-benchmark
  # size, with the config's own precision (16: bfloat16 on a CPU), or 32 on a
  # CPU without bfloat16 instructions, which emulates it many times slower
  # (the run warns there; tests/test_precision.py covers bfloat16's numbers).
  from dreamerv2 import build
  precision = '16' if build.cpu_has_bfloat16() is not False else '32'
  config = config_lib.parse(['--configs', 'defaults', 'atari',
                             '--dataset.batch', '16', '--precision', precision])
  assert config.jit and config.rssm.deter == 600 and config.rssm.hidden == 600
  obs, act = H.obs_space(image=(64, 64, 1)), H.act_space(True, 18)
  with H.precision(config.precision, device='cpu'):
    agent = make_agent(config, obs, act)
    params = sum(int(np.prod(v.shape)) for v in agent.wm.trainable_variables)
    assert 15e6 < params < 25e6  # the paper's 22M are mostly the world model
    data = H.batch(obs, act, 16, 50, terminal_at=(49,))
    # A learnable picture: a bright square on a dark background in every frame.
    image = np.full((16, 50, 64, 64, 1), 30, np.uint8)
    image[:, :, 16:48, 16:48] = 220
    data['image'] = tf.constant(image)
    losses = []
    for _ in range(4):
      metrics = agent.train(data)
      assert all(np.isfinite(float(v)) for v in metrics.values())
      losses.append(float(metrics['model_loss']))
  assert agent._train.experimental_get_tracing_count() == 1     # traced once
  # Each loss is measured before its update (measured: 4062, 4055, 4038, 4009).
  assert all(b < a for a, b in zip(losses, losses[1:])), losses
  assert losses[-1] < losses[0] - 10, losses
  assert int(agent.wm.model_opt.updates) == 4


# Learning --------------------------------------------------------------------


def test_posterior_carries_what_the_actions_cannot_predict():
  # MiniGrid-Empty can be solved from the action history alone (fixed start and
  # goal), so the learning benchmark does not prove that image content reaches
  # the latent. In bench/probes.py a square's position is in the image
  # only: the decoder can reconstruct it only through encoder -> posterior
  # sample (straight through) -> decoder. Until the latent carries it the
  # reconstruction stays at the mean frame's error. Measured with
  # `python3 bench/latent_square.py --precision 32 --config --model_opt.lr 1e-3`
  # (these settings): the KL jumps at 200 updates and the ratio is 0.38 at 500.
  # With the embedding cut off from the posterior, a first version of this test
  # (the same held-out squares) measured 1.04x the floor and failed.
  result = probes.run(500, 500, 32, ['--model_opt.lr', '1e-3'])
  assert result['final_ratio'] < 0.6, result
