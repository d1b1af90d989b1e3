"""The RSSM of DreamerV2 (paper, section 2): filtering, imagination, resets,
straight-through categorical latents, KL balancing and free nats."""

import numpy as np
import pytest
import tensorflow as tf

from common import dists
from common import nets
from common import tfutils

import dreamer_helpers as H

B, T, A = 3, 7, 4           # batch, sequence length, action size
STOCH, DISCRETE, DETER = 4, 5, 12


@pytest.fixture(autouse=True)
def float32():
  with H.precision(32):
    yield


def assert_one_hot(value):
  """One 1 per categorical, 0 elsewhere (up to the float32 rounding of
  one_hot + probs - stop_gradient(probs))."""
  value = np.asarray(value)
  hard = np.eye(value.shape[-1])[value.argmax(-1)]
  np.testing.assert_allclose(value, hard, atol=1e-6)


def make_rssm(embed_size=10, discrete=DISCRETE, **kwargs):
  tf.random.set_seed(0)
  kwargs = {'hidden': 16, 'deter': DETER, 'stoch': STOCH, 'discrete': discrete,
            **kwargs}
  return nets.RSSM(A, embed_size, **kwargs)


def random_inputs(embed_size=10, seed=0, length=T):
  rng = np.random.default_rng(seed)
  embed = tf.constant(rng.normal(size=(B, length, embed_size)), tf.float32)
  action = tf.constant(np.eye(A)[rng.integers(0, A, (B, length))], tf.float32)
  is_first = np.zeros((B, length), bool)
  is_first[:, 0] = True
  return embed, action, tf.constant(is_first)


# Shapes ----------------------------------------------------------------------


@pytest.mark.parametrize('observation', ['image', 'vector'])
def test_observe_and_imagine_give_batch_time_shapes(observation):
  if observation == 'image':
    shapes = {'image': (64, 64, 1)}
  else:
    shapes = {'state': (5,)}
  encoder = nets.Encoder(shapes, cnn_depth=2, mlp_layers=(16, 16))
  rng = np.random.default_rng(0)
  key, shape = next(iter(shapes.items()))
  obs = {key: tf.constant(rng.uniform(-0.5, 0.5, (B, T) + shape), tf.float32)}
  embed = encoder(obs)
  # 64 -> 31 -> 14 -> 6 -> 2 pixels, 8 * cnn_depth channels; vectors: last MLP
  # layer.
  embed_size = 2 * 2 * 16 if observation == 'image' else 16
  assert encoder.embed_size == embed_size
  assert embed.shape == (B, T, embed_size)
  rssm = make_rssm(embed_size)
  _, action, is_first = random_inputs(embed_size)
  post, prior = rssm.observe(embed, action, is_first)
  assert post['stoch'].shape == (B, T, STOCH, DISCRETE)
  assert post['logit'].shape == (B, T, STOCH, DISCRETE)
  assert post['deter'].shape == (B, T, DETER)
  assert prior['logit'].shape == (B, T, STOCH, DISCRETE)
  assert rssm.get_feat(post).shape == (B, T, STOCH * DISCRETE + DETER)
  start = {k: v[:, -1] for k, v in post.items()}
  imagined = rssm.imagine(action[:, :5], start)
  assert imagined['stoch'].shape == (B, 5, STOCH, DISCRETE)
  assert imagined['deter'].shape == (B, 5, DETER)
  assert rssm.get_feat(imagined).shape == (B, 5, STOCH * DISCRETE + DETER)
  assert_one_hot(post['stoch'])
  if observation == 'image':
    decoder = nets.Decoder(shapes, rssm.feat_size, cnn_depth=2)
    assert decoder(rssm.get_feat(post))['image'].mode().shape == (
        B, T, 64, 64, 1)


def test_encoder_and_decoder_have_the_papers_layers_at_default_size():
  shapes = {'image': (64, 64, 1)}
  encoder = nets.Encoder(shapes)
  kernels = [tuple(v.shape)
             for n, v in sorted(tfutils.named_variables(encoder).items())
             if len(v.shape) == 4]
  # 4 convolutions, kernel 4, stride 2, depths 48 * (1, 2, 4, 8).
  assert kernels == [
      (4, 4, 1, 48), (4, 4, 48, 96), (4, 4, 96, 192), (4, 4, 192, 384)]
  image = tf.zeros([1, 64, 64, 1])
  assert encoder.embed_size == 2 * 2 * 384
  assert encoder({'image': image}).shape == (1, 1536)
  feat_size = 32 * 32 + 600
  decoder = nets.Decoder(shapes, feat_size)
  named = tfutils.named_variables(decoder)
  sizes = sorted(
      tuple(v.shape)[:2] for v in named.values() if len(v.shape) == 4)
  assert sizes == [(5, 5), (5, 5), (6, 6), (6, 6)]
  assert [tuple(v.shape) for v in named.values() if len(v.shape) == 2] == [
      (feat_size, 32 * 48)]
  dist = decoder(tf.zeros([2, 3, feat_size]))['image']
  assert dist.mode().shape == (2, 3, 64, 64, 1)
  # Unit-variance Normal per pixel, log-likelihood summed over H, W, C.
  target = tf.fill([2, 3, 64, 64, 1], 0.25) + dist.mode()
  expected = 64 * 64 * (-0.5 * 0.25 ** 2 - 0.5 * np.log(2 * np.pi))
  np.testing.assert_allclose(
      dist.log_prob(target), np.full([2, 3], expected), rtol=1e-5)


def test_gru_update_gate_starts_biased_towards_keeping_the_state():
  cell = nets.GRUCell(6, 8)
  for var in tfutils.named_variables(cell).values():
    if len(var.shape) == 2:
      var.assign(tf.zeros_like(var))
  state = tf.random.stateless_normal([3, 8], [0, 1])
  new = cell(tf.random.stateless_normal([3, 6], [0, 2]), state)
  # Zero weights: candidate tanh(0) = 0, update gate sigmoid(0 - 1) = 0.269.
  update = 1 / (1 + np.exp(1.0))
  np.testing.assert_allclose(new, (1 - update) * state.numpy(), rtol=1e-6)


def test_gru_has_a_trainable_bias_of_three_deter_before_the_layer_norm():
  # The original's GRUCell: tfkl.Dense(3 * size, use_bias=norm is not None),
  # True for norm=True, so its Dense has a bias (zeros at first).
  cell = nets.GRUCell(6, 8)
  bias = cell.dense.bias
  assert bias is not None and bias.trainable and tuple(bias.shape) == (24,)
  np.testing.assert_array_equal(bias.numpy(), np.zeros(24))
  bias.assign(tf.random.stateless_normal([24], [0, 3]))
  x = tf.random.stateless_normal([3, 6], [0, 1])
  state = tf.random.stateless_normal([3, 8], [0, 2])
  # By hand: parts = [x, h] W + b, layer norm (eps 1e-3), then the gates.
  parts = (np.concatenate([x, state], -1) @ cell.dense.kernel.numpy()
           + bias.numpy())
  mean, var = parts.mean(-1, keepdims=True), parts.var(-1, keepdims=True)
  parts = (parts - mean) / np.sqrt(var + 1e-3) * cell.norm.scale.numpy() \
      + cell.norm.offset.numpy()
  reset, cand, update = np.split(parts, 3, -1)
  sigmoid = lambda v: 1 / (1 + np.exp(-v))
  cand = np.tanh(sigmoid(reset) * cand)
  update = sigmoid(update - 1.0)
  expected = update * cand + (1 - update) * state.numpy()
  with tf.GradientTape() as tape:
    new = cell(x, state)
    loss = tf.reduce_sum(new * tf.range(8, dtype=tf.float32))
  np.testing.assert_allclose(new.numpy(), expected, rtol=1e-5, atol=1e-6)
  grad = tape.gradient(loss, bias)
  assert grad.dtype == tf.float32 and float(tf.norm(grad)) > 0


def test_a_checkpoint_from_before_the_gru_bias_stops_with_one_line(tmp_path):
  make = lambda: nets.RSSM(3, 10, hidden=8, deter=8, stoch=2, discrete=2)
  path = tmp_path / 'variables.pkl'
  tfutils.save_checkpoint(make(), path)
  import pickle
  values = pickle.loads(path.read_bytes())
  del values['cell/dense/bias']  # As a checkpoint of the GRU without a bias.
  path.write_bytes(pickle.dumps(values))
  with pytest.raises(tfutils.CheckpointMismatch) as error:
    tfutils.load_checkpoint(make(), path)
  message = str(error.value)
  assert '\n' not in message
  assert str(path) in message and 'cell/dense/bias' in message
  assert 'before the GRU had its bias' in message


# Filtering -------------------------------------------------------------------


def loop_of_obs_steps(rssm, embed, action, is_first):
  """The definition: one `obs_step` per time step, stacked on axis 1."""
  state = rssm.initial(B)
  posts, priors = [], []
  for t in range(embed.shape[1]):
    state, prior = rssm.obs_step(
        state, action[:, t], embed[:, t], is_first[:, t], sample=False)
    posts.append(state)
    priors.append(prior)
  stack = lambda states: {
      k: np.stack([s[k] for s in states], 1) for k in states[0]}
  return stack(posts), stack(priors)


@pytest.mark.parametrize(
    'discrete', [DISCRETE, 0], ids=['categorical', 'gaussian'])
def test_observe_equals_a_loop_of_obs_steps(discrete):
  rssm = make_rssm(discrete=discrete)
  embed, action, is_first = random_inputs()
  # A second episode starts in the middle of the sequence.
  is_first = tf.constant(np.array(is_first) | (np.arange(T) == 4)[None])
  post, prior = rssm.observe(embed, action, is_first, sample=False)
  loop_post, loop_prior = loop_of_obs_steps(rssm, embed, action, is_first)
  stats = ('logit',) if discrete else ('mean', 'std')
  for key in stats + ('deter', 'stoch'):
    np.testing.assert_allclose(
        post[key], loop_post[key], atol=1e-5, rtol=1e-5, err_msg=key)
  for key in stats:
    np.testing.assert_allclose(
        prior[key], loop_prior[key], atol=1e-5, rtol=1e-5, err_msg=key)


def test_observing_in_chunks_equals_observing_the_whole_sequence():
  rssm = make_rssm()
  embed, action, is_first = random_inputs()
  whole, whole_prior = rssm.observe(embed, action, is_first, sample=False)
  first, _ = rssm.observe(
      embed[:, :4], action[:, :4], is_first[:, :4], sample=False)
  state = {k: v[:, -1] for k, v in first.items()}
  rest, rest_prior = rssm.observe(embed[:, 4:], action[:, 4:], is_first[:, 4:],
                                  state=state, sample=False)
  for key in ('logit', 'deter', 'stoch'):
    np.testing.assert_allclose(
        whole[key][:, 4:], rest[key], atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(
      whole_prior['logit'][:, 4:], rest_prior['logit'], atol=1e-5)


def test_is_first_starts_the_posterior_afresh():
  rssm = make_rssm()
  embed, action, is_first = random_inputs()
  start = 3
  flags = np.array(is_first)
  flags[:, start] = True
  joined, _ = rssm.observe(embed, action, flags, sample=False)
  flags = tf.constant(flags)
  fresh, _ = rssm.observe(
      embed[:, start:], action[:, start:], flags[:, start:], sample=False)
  for key in ('logit', 'deter', 'stoch'):
    np.testing.assert_allclose(
        joined[key][:, start:], fresh[key], atol=1e-5, rtol=1e-5)
  # Without the reset the history (and the action before step 3) matters.
  carried, _ = rssm.observe(embed, action, is_first, sample=False)
  assert np.abs(carried['deter'][:, start] - fresh['deter'][:, 0]).max() > 1e-2
  # A carried-in state is forgotten as well.
  state = {k: v[:, -1] for k, v in carried.items()}
  restarted, _ = rssm.observe(embed[:, start:], action[:, start:],
                              flags[:, start:], state=state, sample=False)
  np.testing.assert_allclose(
      restarted['deter'], fresh['deter'], atol=1e-5, rtol=1e-5)


def test_obs_step_zeroes_state_and_action_where_is_first():
  rssm = make_rssm()
  embed, action, _ = random_inputs()
  state, _ = rssm.obs_step(rssm.initial(B), action[:, 0], embed[:, 0],
                           tf.zeros([B], bool), sample=False)
  state, _ = rssm.obs_step(state, action[:, 1], embed[:, 1],
                           tf.zeros([B], bool), sample=False)
  is_first = tf.constant([True, False, True])
  post, _ = rssm.obs_step(
      state, action[:, 2], embed[:, 2], is_first, sample=False)
  fresh, _ = rssm.obs_step(rssm.initial(B), tf.zeros_like(action[:, 2]),
                           embed[:, 2], tf.zeros([B], bool), sample=False)
  for row, reset in enumerate([True, False, True]):
    same = np.allclose(post['deter'][row], fresh['deter'][row], atol=1e-6)
    assert same == reset, row


# Straight-through categorical latents ---------------------------------------


def test_categorical_sample_is_one_hot_with_the_gradient_of_the_probabilities():
  logits = tf.Variable(tf.random.stateless_normal([6, STOCH, DISCRETE], [1, 2]))
  weights = tf.random.stateless_normal([6, STOCH, DISCRETE], [3, 4])
  for draw in ('sample', 'mode'):
    with tf.GradientTape(persistent=True) as tape:
      dist = dists.OneHot(logits, dims=1)
      value = getattr(dist, draw)()
      through_sample = tf.reduce_sum(value * weights)
      through_probs = tf.reduce_sum(dist.probs * weights)
    assert_one_hot(value)
    grad = tape.gradient(through_sample, logits).numpy()
    assert np.abs(grad).max() > 1e-3
    np.testing.assert_allclose(
        grad, tape.gradient(through_probs, logits), atol=1e-7)
  mode = dists.OneHot(logits, dims=1).mode().numpy()
  np.testing.assert_array_equal(mode.argmax(-1), logits.numpy().argmax(-1))


def test_gradients_reach_the_posterior_logits_through_sampled_latents():
  rssm = make_rssm()
  embed, action, is_first = random_inputs()
  embed = tf.Variable(embed)
  with tf.GradientTape() as tape:
    post, _ = rssm.observe(embed, action, is_first, sample=True)
    # Only the sampled latents are used, as the heads use them.
    loss = tf.reduce_sum(post['stoch'][:, :, :, 0])
  assert_one_hot(post['stoch'])
  grad = tape.gradient(loss, embed).numpy()
  assert np.all(np.abs(grad).sum(-1) > 0)


def test_categorical_samples_follow_the_probabilities():
  logits = tf.math.log(tf.constant([[0.1, 0.2, 0.7]] * 20000))
  tf.random.set_seed(0)
  freq = dists.OneHot(logits).sample().numpy().mean(0)
  np.testing.assert_allclose(freq, [0.1, 0.2, 0.7], atol=0.015)


# KL balancing and free nats --------------------------------------------------


def categorical_states(seed, scale=1.0):
  rng = np.random.default_rng(seed)
  post = tf.Variable(
      scale * rng.normal(size=(B, T, STOCH, DISCRETE)), dtype=tf.float32)
  prior = tf.Variable(
      scale * rng.normal(size=(B, T, STOCH, DISCRETE)), dtype=tf.float32)
  return post, prior


def kl_grads(rssm, post, prior, **kl):
  with tf.GradientTape() as tape:
    loss, value = rssm.kl_loss({'logit': post}, {'logit': prior}, **kl)
  grad_post, grad_prior = tape.gradient(loss, [post, prior])
  zero = lambda g, v: np.zeros(v.shape) if g is None else g.numpy()
  return (loss.numpy(), value.numpy(), zero(grad_post, post),
          zero(grad_prior, prior))


def plain_kl_grads(post, prior):
  with tf.GradientTape() as tape:
    kl = tf.reduce_mean(dists.OneHot(post, 1).kl(dists.OneHot(prior, 1)))
  return [g.numpy() for g in tape.gradient(kl, [post, prior])]


def test_kl_value_is_the_categorical_kl_of_posterior_to_prior():
  rssm = make_rssm()
  post, prior = categorical_states(0)
  _, value, _, _ = kl_grads(rssm, post, prior, forward=False, balance=0.8,
                            free=0.0, free_avg=True)
  p = tf.nn.softmax(post).numpy()
  q = tf.nn.softmax(prior).numpy()
  expected = (p * (np.log(p) - np.log(q))).sum((-1, -2))
  assert value.shape == (B, T)
  np.testing.assert_allclose(value, expected, rtol=1e-5)


@pytest.mark.parametrize('forward', [False, True])
def test_kl_balancing_sends_80_percent_of_the_gradient_to_the_prior(forward):
  rssm = make_rssm()
  post, prior = categorical_states(1)
  loss, value, grad_post, grad_prior = kl_grads(
      rssm, post, prior, forward=forward, balance=0.8, free=0.0, free_avg=True)
  # Both terms have the value of the KL, only their gradients are weighted.
  np.testing.assert_allclose(loss, value.mean(), rtol=1e-6)
  with tf.GradientTape() as tape:
    lhs, rhs = (prior, post) if forward else (post, prior)
    kl = tf.reduce_mean(dists.OneHot(lhs, 1).kl(dists.OneHot(rhs, 1)))
  plain_post, plain_prior = [
      g.numpy() for g in tape.gradient(kl, [post, prior])]
  # Elementwise: the prior gets 0.8 and the posterior 0.2 of the plain KL
  # gradient, to float32's rounding of the largest entry (an entry 100x
  # smaller came out 2e-5 apart relatively on an AVX2-only CPU).
  for ours, plain, share in ((grad_prior, plain_prior, 0.8),
                             (grad_post, plain_post, 0.2)):
    np.testing.assert_allclose(
        ours, share * plain, rtol=1e-5, atol=1e-6 * np.abs(plain).max())
  share_prior = np.linalg.norm(grad_prior) / np.linalg.norm(plain_prior)
  share_post = np.linalg.norm(grad_post) / np.linalg.norm(plain_post)
  assert share_prior / share_post == pytest.approx(4.0, abs=1e-3)


def test_kl_balancing_near_equal_distributions_prior_gradient_is_4x_posterior():
  # For nearby distributions KL is symmetric to second order, so the raw
  # gradient norms themselves are in the ratio balance / (1 - balance).
  rssm = make_rssm()
  rng = np.random.default_rng(2)
  base = rng.normal(size=(B, T, STOCH, DISCRETE))
  post = tf.Variable(base, dtype=tf.float32)
  prior = tf.Variable(
      base + 3e-3 * rng.normal(size=base.shape), dtype=tf.float32)
  _, _, grad_post, grad_prior = kl_grads(
      rssm, post, prior, forward=False, balance=0.8, free=0.0, free_avg=True)
  ratio = np.linalg.norm(grad_prior) / np.linalg.norm(grad_post)
  assert ratio == pytest.approx(4.0, abs=1e-3)          # measured 4.0003


def test_kl_balance_one_half_is_the_plain_kl():
  rssm = make_rssm()
  post, prior = categorical_states(3)
  loss, value, grad_post, grad_prior = kl_grads(
      rssm, post, prior, forward=False, balance=0.5, free=0.0, free_avg=True)
  plain_post, plain_prior = plain_kl_grads(post, prior)
  np.testing.assert_allclose(loss, value.mean(), rtol=1e-6)
  np.testing.assert_allclose(grad_post, plain_post, rtol=1e-5, atol=1e-9)
  np.testing.assert_allclose(grad_prior, plain_prior, rtol=1e-5, atol=1e-9)


def test_free_nats_hold_the_loss_at_free_with_zero_gradient_below_it():
  rssm = make_rssm()
  post, prior = categorical_states(4, scale=0.1)       # KL well below 1 nat
  loss, value, grad_post, grad_prior = kl_grads(
      rssm, post, prior, forward=False, balance=0.8, free=1.0, free_avg=True)
  assert value.mean() < 0.2
  assert loss == pytest.approx(1.0, abs=1e-7)
  assert np.abs(grad_post).max() == 0 and np.abs(grad_prior).max() == 0


def test_free_nats_apply_to_the_batch_mean_or_per_element():
  rssm = make_rssm()
  post, prior = categorical_states(5, scale=0.7)
  kl = dict(forward=False, balance=0.8)
  _, value, _, _ = kl_grads(rssm, post, prior, free=0.0, free_avg=True, **kl)
  # A threshold between the smallest KL and the mean, so the two modes differ.
  free = float(np.quantile(value, 0.4))
  assert value.min() < free < value.mean()
  avg, _, grad_post, _ = kl_grads(
      rssm, post, prior, free=free, free_avg=True, **kl)
  each, _, grad_post_each, _ = kl_grads(
      rssm, post, prior, free=free, free_avg=False, **kl)
  # mean above free: unclipped
  assert avg == pytest.approx(value.mean(), rel=1e-5)
  assert each == pytest.approx(np.maximum(value, free).mean(), rel=1e-5)
  assert each > avg
  # Per element, the clipped entries get no gradient; on the mean, all do.
  clipped = value < free
  assert np.abs(grad_post_each[clipped]).max() == 0
  assert np.abs(grad_post_each[~clipped]).sum(-1).min() > 0
  assert np.abs(grad_post).sum((-1, -2))[clipped].min() > 0


# Gaussian latents (rssm.discrete 0) -------------------------------------------


def test_gaussian_latents_observe_imagine_and_kl_in_closed_form():
  rssm = make_rssm(discrete=0)
  embed, action, is_first = random_inputs()
  post, prior = rssm.observe(embed, action, is_first)
  assert post['stoch'].shape == (B, T, STOCH)
  assert post['mean'].shape == post['std'].shape == (B, T, STOCH)
  assert prior['mean'].shape == prior['std'].shape == (B, T, STOCH)
  assert np.all(post['std'] >= 0.1) and np.all(prior['std'] >= 0.1)   # min_std
  assert rssm.get_feat(post).shape == (B, T, STOCH + DETER)
  imagined = rssm.imagine(action, {k: v[:, -1] for k, v in post.items()})
  assert imagined['stoch'].shape == (B, T, STOCH)
  assert np.all(np.isfinite(imagined['deter']))
  loss, value = rssm.kl_loss(post, prior, forward=False, balance=0.8, free=0.0,
                             free_avg=True)
  m1, s1 = post['mean'].numpy(), post['std'].numpy()
  m2, s2 = prior['mean'].numpy(), prior['std'].numpy()
  closed = (np.log(s2 / s1) + (s1 ** 2 + (m1 - m2) ** 2) / (2 * s2 ** 2)
            - 0.5).sum(-1)
  assert value.shape == (B, T)
  np.testing.assert_allclose(value, closed, rtol=1e-4, atol=1e-6)
  assert float(loss) == pytest.approx(closed.mean(), rel=1e-4)
  # Sampled latents are reparameterised: gradients reach the posterior mean.
  mean = tf.Variable(m1)
  with tf.GradientTape() as tape:
    total = tf.reduce_sum(dists.Gaussian(mean, s1).sample())
  np.testing.assert_allclose(tape.gradient(total, mean), np.ones_like(m1))


# Fast paths against TensorFlow's own ops -------------------------------------

# Tolerances: float32 sums in another order agree to ~1e-5 relative; bfloat16
# rounds every input and weight to 8 bits of mantissa (relative 2^-8 = 0.4%),
# so a dot product of hundreds of terms is within a few percent of float32.
TOLERANCE = {tf.float32: 1e-4, tf.bfloat16: 3e-2}


def relative_error(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.abs(a - b).max() / (np.abs(b).max() + 1e-12)


def conv_and_reference(layer, x, reference):
  """Values and gradients (input and kernel) of a layer and of a reference
  function of (x, kernel), under one upstream gradient."""
  upstream = None
  results = []
  for fn in (lambda x: layer(x), lambda x: reference(
      nets.cast(x), nets.cast(layer.kernel)) + nets.cast(layer.bias)):
    with tf.GradientTape() as tape:
      tape.watch(x)
      y = fn(x)
      if upstream is None:
        upstream = tf.random.stateless_normal(tf.shape(y), [1, 2])
      loss = tf.reduce_sum(tf.cast(y, tf.float32) * upstream)
    dx, dk = tape.gradient(loss, [x, layer.kernel])
    results.append((y, dx, dk))
  return results


@pytest.mark.parametrize('bits', [32, 16])
def test_decoder_transposed_conv_from_1x1_is_the_transposed_conv(bits):
  # The decoder's first layer: [N, 1, 1, 1536] -> [N, 5, 5, 192], as a matmul.
  with H.precision(bits, device='cpu') as dtype:
    tf.random.set_seed(0)
    layer = nets.Conv(1536, 192, 5, 2, transpose=True)
    x = tf.random.normal([6, 1, 1, 1536])
    reference = lambda x, k: tf.nn.conv2d_transpose(
        x, k, [6, 5, 5, 192], 2, 'VALID')
    (y, dx, dk), (y_ref, dx_ref, dk_ref) = conv_and_reference(
        layer, x, reference)
  assert y.dtype == dtype and y.shape == (6, 5, 5, 192)
  for ours, theirs in ((y, y_ref), (dx, dx_ref), (dk, dk_ref)):
    assert relative_error(ours, theirs) < TOLERANCE[dtype]


@pytest.mark.parametrize('bits', [32, 16])
def test_encoder_conv_with_2x2_outputs_is_the_conv(bits):
  # The encoder's last layer: [N, 6, 6, 192] -> [N, 2, 2, 384], kernel 4,
  # stride 2, as a matmul over the four input patches.
  with H.precision(bits, device='cpu') as dtype:
    tf.random.set_seed(0)
    layer = nets.Conv(192, 384, 4, 2)
    x = tf.random.normal([6, 6, 6, 192])
    reference = lambda x, k: tf.nn.conv2d(x, k, 2, 'VALID')
    (y, dx, dk), (y_ref, dx_ref, dk_ref) = conv_and_reference(
        layer, x, reference)
  assert y.dtype == dtype and y.shape == (6, 2, 2, 384)
  for ours, theirs in ((y, y_ref), (dx, dx_ref), (dk, dk_ref)):
    assert relative_error(ours, theirs) < TOLERANCE[dtype]


@pytest.mark.parametrize('channels', [1, 3])
@pytest.mark.parametrize('bits', [32, 16])
def test_decoder_last_layer_by_phases_is_the_transposed_conv(bits, channels):
  # The decoder's last layer: [N, 30, 30, 48] -> [N, 64, 64, C], kernel 6,
  # stride 2, as one stride-1 conv over the four output phases.
  with H.precision(bits, device='cpu') as dtype:
    tf.random.set_seed(0)
    layer = nets.Conv(48, channels, 6, 2, transpose=True)
    x = tf.random.normal([4, 30, 30, 48])
    reference = lambda x, k: tf.nn.conv2d_transpose(
        x, k, [4, 64, 64, channels], 2, 'VALID')
    (y, dx, dk), (y_ref, dx_ref, dk_ref) = conv_and_reference(
        layer, x, reference)
  assert y.dtype == dtype and y.shape == (4, 64, 64, channels)
  for ours, theirs in ((y, y_ref), (dx, dx_ref), (dk, dk_ref)):
    assert relative_error(ours, theirs) < TOLERANCE[dtype]
