"""Mixed precision (REFERENCE section 5, `precision: 16`): bfloat16 on a CPU
computes the same losses as float32; float16 (GPU) scales the loss, skips
steps whose gradients overflow and halves the scale after them.

`nets.set_precision` sets the process-wide default: every test restores it.
An Agent computes in its own precision (`nets.compute_in`)."""

import numpy as np
import pytest
import tensorflow as tf

from common import nets
from common import tfutils
from dreamerv2 import agent as agent_lib

import dreamer_helpers as H

# Measured on 3 seeds of the model below: model_loss differs by 1.0e-4
# (relative), each term by at most 0.3%, the gradients' cosine is 0.90-0.94.
MODEL_LOSS_RTOL = 1e-3
TERM_RTOL = 0.02
MIN_GRAD_COSINE = 0.8


@pytest.fixture(autouse=True)
def restore_precision():
  """Start each test in float32 and restore the dtype it found afterwards."""
  with H.precision(32):
    yield
  assert nets.compute_dtype() == tf.float32


def small_world_model(seed=0):
  config = H.tiny_config(
      rssm={'hidden': 64, 'deter': 64, 'stoch': 8, 'discrete': 8},
      encoder={'cnn_depth': 8}, decoder={'cnn_depth': 8})
  obs, act = H.obs_space(image=(64, 64, 1), vector=5), H.act_space(True, 3)
  tf.random.set_seed(seed)
  wm = agent_lib.WorldModel(
      config, obs, 3, tf.Variable(0, dtype=tf.int64, trainable=False))
  return wm, H.batch(obs, act, 4, 10, seed=seed, terminal_at=(9,))


def loss_and_grads(wm, data, bits):
  """Model loss, its terms and the gradient under `bits` precision on a CPU,
  with the same latent samples (same seed)."""
  with H.precision(bits, device='cpu') as dtype:
    tf.random.set_seed(1)
    with tf.GradientTape() as tape:
      loss, _, metrics = wm.loss(data)
    grads = tape.gradient(loss, wm.model_opt.params)
  flat = np.concatenate([g.numpy().ravel() for g in grads])
  terms = {k: float(v) for k, v in metrics.items()}
  return dtype, float(loss), terms, flat


def test_set_precision_selects_the_compute_dtype():
  with H.precision(16, device='cpu') as dtype:
    assert dtype == tf.bfloat16
  with H.precision(16, device='gpu') as dtype:
    assert dtype == tf.float16
  assert nets.set_precision(32) == tf.float32
  with pytest.raises(ValueError, match='8'):
    nets.set_precision(8)


def test_bfloat16_and_float32_losses_agree_on_the_same_batch_and_weights():
  wm, data = small_world_model()
  dtype32, loss32, terms32, grad32 = loss_and_grads(wm, data, 32)
  dtype16, loss16, terms16, grad16 = loss_and_grads(wm, data, 16)
  assert (dtype32, dtype16) == (tf.float32, tf.bfloat16)
  assert loss16 != loss32                       # bfloat16 really was used
  assert loss16 == pytest.approx(loss32, rel=MODEL_LOSS_RTOL)
  for key in ('kl_loss', 'image_loss', 'state_loss', 'reward_loss',
              'discount_loss', 'prior_ent', 'post_ent'):
    assert terms16[key] == pytest.approx(terms32[key], rel=TERM_RTOL), key
  # The image loss without its constant (0.5 log 2 pi per pixel) agrees too.
  const = 64 * 64 * 0.5 * np.log(2 * np.pi)
  assert terms16['image_loss'] - const == pytest.approx(
      terms32['image_loss'] - const, rel=0.01)
  cosine = grad16 @ grad32 / np.linalg.norm(grad16) / np.linalg.norm(grad32)
  assert cosine > MIN_GRAD_COSINE
  assert np.linalg.norm(grad16) == pytest.approx(
      np.linalg.norm(grad32), rel=0.5)


def test_weights_stay_float32_under_bfloat16_and_the_agent_trains():
  with H.precision(16, device='cpu'):
    config = H.tiny_config(precision=16)
    obs, act = H.obs_space(image=(64, 64, 1)), H.act_space(True, 3)
    tf.random.set_seed(0)
    agent = agent_lib.Agent(config, obs, act)
    metrics = agent.train(H.batch(obs, act, 3, 6))
  assert {v.dtype for v in agent.variables} <= {tf.float32, tf.int64}
  assert all(np.isfinite(float(v)) for v in metrics.values())
  for name in ('model', 'actor', 'critic'):
    # bfloat16 needs no scaling
    assert float(metrics[f'{name}_loss_scale']) == 1.0
    assert float(metrics[f'{name}_grad_norm']) > 0, name


def test_an_agents_precision_is_its_own_and_leaves_the_default_alone():
  obs, act = H.obs_space(vector=5), H.act_space(True, 3)
  step = {'state': np.zeros((1, 5), np.float32), 'is_first': np.ones(1, bool)}
  # Built and called outside any precision block: its update is bfloat16
  # all the same (and its policy float32, by design: agent.POLICY_DTYPE).
  agent16 = agent_lib.Agent(H.tiny_config(precision=16, jit=True), obs, act)
  assert nets.compute_dtype() == tf.float32
  data = H.batch(obs, act, 3, 6)
  agent16.train(data)
  graph = agent16._train.get_concrete_function(data).graph
  matmuls = {op.get_attr('T') for op in graph.get_operations()
             if op.type == 'MatMul'}
  assert agent16.dtype == tf.bfloat16 and matmuls == {tf.bfloat16}
  _, (latent, action) = agent16.policy(step)
  assert action.dtype == tf.float32 and latent['stoch'].dtype == tf.float32
  assert nets.compute_dtype() == tf.float32
  # A float32 agent under a bfloat16 default stays float32, its optimizer too.
  with H.precision(16, device='cpu'):
    agent32 = agent_lib.Agent(H.tiny_config(precision=32), obs, act)
    _, (_, action) = agent32.policy(step)
    metrics = agent32.train(H.batch(obs, act, 3, 6))
    assert nets.compute_dtype() == tf.bfloat16
  assert (action.dtype == tf.float32
          and float(metrics['model_loss_scale']) == 1.0)


# float16 loss scaling ---------------------------------------------------------


def regression(seed=0):
  """A tiny MLP regression: (model, inputs, targets)."""
  tf.random.set_seed(seed)
  mlp = nets.MLP(8, [], 2, 16)
  x = tf.random.stateless_normal([32, 8], [seed, 1])
  y = tf.random.stateless_normal([32], [seed, 2])
  return mlp, x, y


def step(mlp, opt, x, y, multiplier=1.0):
  with tf.GradientTape() as tape:
    loss = -tf.reduce_mean(mlp(x).log_prob(y)) * multiplier
  return {k: float(v) for k, v in opt(tape, loss).items()}


def float32_grad_norm(mlp, x, y):
  with H.precision(32):
    with tf.GradientTape() as tape:
      loss = -tf.reduce_mean(mlp(x).log_prob(y))
    grads = tape.gradient(loss, mlp.trainable_variables)
  return float(tf.linalg.global_norm(grads))


def test_float16_overflowing_step_is_skipped_and_halves_the_loss_scale():
  with H.precision(16, device='gpu'):
    mlp, x, y = regression()
    opt = tfutils.Optimizer('model', mlp.trainable_variables, lr=1e-3,
                            eps=1e-5, clip=100, wd=0.0)
    before = H.snapshot(mlp)
    # 1e30 times the loss: its float16 gradients are inf.
    metrics = step(mlp, opt, x, y, multiplier=1e30)
    assert H.unchanged(before, mlp) == sorted(before)        # weights untouched
    assert int(opt.skipped) == 1
    assert metrics['model_skipped_steps'] == 1.0
    assert metrics['model_loss_scale'] == 2.0 ** 14              # 2^15 halved
    assert not np.isfinite(metrics['model_grad_norm'])


def test_a_skipped_float16_step_decays_and_advances_adams_step_as_keras():
  # Keras 2's LossScaleOptimizer: a skipped step still increments
  # `iterations` (do_not_apply_fn), so the next applied step's bias
  # correction is that of step 2; the original's weight decay runs on every
  # call, before apply_gradients.
  from test_behavior import numpy_adam
  wd, lr, eps = 1e-2, 1e-3, 1e-5
  with H.precision(16, device='gpu'):
    mlp, x, y = regression()
    params = mlp.trainable_variables
    opt = tfutils.Optimizer('model', params, lr=lr, eps=eps, clip=None, wd=wd)
    before = [v.numpy().astype(np.float64) for v in params]
    step(mlp, opt, x, y, multiplier=1e30)  # Overflows: skipped.
    assert int(opt.skipped) == 1 and int(opt.updates) == 1
    for var, value in zip(params, before):  # Decay alone.
      np.testing.assert_allclose(var.numpy(), value * (1 - wd), rtol=1e-6)
    decayed = [v.numpy().astype(np.float64) for v in params]
    with tf.GradientTape() as tape:
      loss = -tf.reduce_mean(mlp(x).log_prob(y))
    grads = [g.numpy().astype(np.float64)
             for g in tape.gradient(loss, params)]
    step(mlp, opt, x, y)  # Finite: applied as Adam's second step.
  assert int(opt.skipped) == 1 and int(opt.updates) == 2
  state = {'t': 1, 'm': [np.zeros_like(v) for v in decayed],
           'v': [np.zeros_like(v) for v in decayed]}
  expected, _ = numpy_adam(decayed, grads, state, lr, eps, None, wd)
  for var, want in zip(params, expected):
    # float16 gradients: agreement to a few parts in a thousand of a step.
    np.testing.assert_allclose(var.numpy(), want, rtol=0, atol=2e-5)


def test_float16_finite_step_applies_the_unscaled_gradient():
  with H.precision(16, device='gpu'):
    mlp, x, y = regression()
    opt = tfutils.Optimizer('model', mlp.trainable_variables, lr=1e-3,
                            eps=1e-5, clip=100, wd=0.0)
    assert float(opt.loss_scale) == 2.0 ** 15
    before = H.snapshot(mlp)
    metrics = step(mlp, opt, x, y)
  reference = float32_grad_norm_of_snapshot(before, x, y)
  assert int(opt.updates) == 1 and int(opt.skipped) == 0
  assert metrics['model_loss_scale'] == 2.0 ** 15  # unchanged after a good step
  assert H.unchanged(before, mlp) == []            # every weight moved
  # The reported norm is of the true gradient: the loss scale divided out.
  assert metrics['model_grad_norm'] == pytest.approx(reference, rel=0.02)


def float32_grad_norm_of_snapshot(values, x, y):
  """Gradient norm of the regression loss in float32 at the weights `values`."""
  with H.precision(32):
    mlp, _, _ = regression()
    named = tfutils.named_variables(mlp)
    for name, value in values.items():
      named[name].assign(value)
    return float32_grad_norm(mlp, x, y)


def test_float16_loss_scale_halves_on_overflow_then_doubles_after_2000_steps():
  with H.precision(16, device='gpu'):
    mlp, x, y = regression()
    opt = tfutils.Optimizer('model', mlp.trainable_variables, lr=1e-3,
                            eps=1e-5, clip=100, wd=0.0)
    # A loss of ~1e3: scaled by 2^15 its gradients exceed float16's 65504.
    scales = []
    for _ in range(12):
      metrics = step(mlp, opt, x, y, multiplier=1e3)
      scales.append(metrics['model_loss_scale'])
      if int(opt.updates) > int(opt.skipped):  # A step was applied.
        break
    assert int(opt.skipped) >= 1
    assert int(opt.updates) == int(opt.skipped) + 1
    assert scales[:int(opt.skipped)] == [
        2.0 ** (15 - k) for k in range(1, int(opt.skipped) + 1)]
    scale = float(opt.loss_scale)
    assert int(opt.good_steps) == 1
    opt.good_steps.assign(1999)          # as if 1999 good steps had passed
    step(mlp, opt, x, y)
    assert float(opt.loss_scale) == 2 * scale and int(opt.good_steps) == 0


def test_float16_agent_update_learns():
  # Default precision 16 on a GPU runs float16 with loss scaling.
  with H.precision(16, device='gpu'):
    config = H.tiny_config(precision=16)
    obs, act = H.obs_space(image=(64, 64, 1)), H.act_space(True, 3)
    tf.random.set_seed(0)
    agent = agent_lib.Agent(config, obs, act, dtype=tf.float16)
    data = H.batch(obs, act, 3, 6)
    before = H.trainable_snapshot(agent.wm)
    # The first steps may overflow at the initial scale 2^15 and be skipped.
    for _ in range(3):
      metrics = agent.train(data)
  assert all(np.isfinite(float(v)) for v in metrics.values())
  for name in ('model', 'actor', 'critic'):
    assert float(metrics[f'{name}_skipped_steps']) <= 1, name
    assert float(metrics[f'{name}_loss_scale']) in (2.0 ** 15, 2.0 ** 14), name
    assert float(metrics[f'{name}_grad_norm']) > 0, name
  # Weight decay alone (1e-6) moves a weight by far less than 1e-5.
  now = H.trainable_snapshot(agent.wm)
  moved = [n for n in before if np.abs(now[n] - before[n]).max() > 1e-5]
  assert len(moved) == len(before)


def test_bfloat16_reduces_the_world_model_loss_as_float32_does():
  # Same initial weights, same fixed batch, 15 updates each: bfloat16 must
  # learn (float32: 3937 -> 3873), and its loss curve must stay within 0.5%
  # of float32's (measured gap: 0.11%), so a broken bf16 path fails.
  obs, act = H.obs_space(image=(64, 64, 1)), H.act_space(True, 3)
  data = H.batch(obs, act, 3, 6)
  # A learnable image (a fixed gradient pattern) instead of pixel noise.
  ramp = np.linspace(0, 255, 64 * 64).reshape(64, 64, 1).astype(np.uint8)
  data['image'] = tf.constant(np.broadcast_to(ramp, (3, 6, 64, 64, 1)))
  curves = {}
  for bits in (32, 16):
    with H.precision(bits, device='cpu'):
      tf.random.set_seed(0)
      config = H.tiny_config(precision=bits).update({'model_opt.lr': 3e-3})
      wm = agent_lib.WorldModel(config, obs, 3, tf.Variable(0, dtype=tf.int64))
      curves[bits] = [float(wm.train(data)[1]['model_loss']) for _ in range(15)]
  for bits, curve in curves.items():
    assert curve[-1] < curve[0] - 20, (bits, curve)   # nats of image likelihood
  np.testing.assert_allclose(curves[16], curves[32], rtol=5e-3)


@pytest.mark.parametrize('layer, inputs', [
    (lambda: nets.Dense(16, 8), (6400, 16)),
    (lambda: nets.Conv(4, 8, 4, 2), (100, 66, 66, 4)),
    (lambda: nets.Conv(4, 1, 6, 2, transpose=True), (100, 31, 31, 4)),
])
def test_bfloat16_bias_gradient_matches_float32_on_large_batches(layer, inputs):
  # TensorFlow's CPU BiasAddGrad sums bfloat16 in bfloat16 and stalls on sums
  # over thousands of positions (the decoder's output bias got 255 for 16425).
  tf.random.set_seed(0)
  layer = layer()
  x = tf.random.uniform(inputs, 0.0, 1.0, seed=1)
  def bias_grad(bits):
    with H.precision(bits, device='cpu'):
      with tf.GradientTape() as tape:
        loss = tf.reduce_sum(tf.cast(layer(x), tf.float32))
      return tape.gradient(loss, layer.bias).numpy()
  exact, half = bias_grad(32), bias_grad(16)
  positions = np.prod(inputs[:-1]) if len(inputs) == 2 else None
  assert positions is None or np.allclose(exact, positions)
  np.testing.assert_allclose(half, exact, rtol=0.01)


def test_bfloat16_decoder_and_encoder_gradients_match_float32():
  tf.random.set_seed(0)
  rng = np.random.default_rng(0)
  shapes = {'image': (64, 64, 1)}
  encoder = nets.Encoder(shapes, cnn_keys='image', mlp_keys='$^', cnn_depth=8)
  decoder = nets.Decoder(
      shapes, 40, cnn_keys='image', mlp_keys='$^', cnn_depth=8)
  feat = tf.constant(rng.normal(0, 1, [200, 40]), tf.float32)
  image = tf.constant(rng.uniform(-0.5, 0.5, [200, 64, 64, 1]), tf.float32)
  variables = decoder.trainable_variables + encoder.trainable_variables
  def grads(bits):
    with H.precision(bits, device='cpu'):
      with tf.GradientTape() as tape:
        loss = -tf.reduce_mean(decoder(feat)['image'].log_prob(image))
        loss += tf.reduce_mean(
            tf.cast(encoder({'image': nets.cast(image)}), tf.float32))
      return tape.gradient(loss, variables)
  for exact, half, var in zip(grads(32), grads(16), variables):
    exact, half = exact.numpy().ravel(), half.numpy().ravel()
    cosine = exact @ half / np.linalg.norm(exact) / np.linalg.norm(half)
    assert cosine > 0.999, (var.name, var.shape, cosine)


# XLA --------------------------------------------------------------------------


def test_an_xla_update_equals_the_graph_update(monkeypatch):
  # The latent and action samples are replaced by their modes in both, so the
  # two compute the same function; XLA's own random stream would differ.
  from common import dists
  monkeypatch.setattr(dists.OneHot, 'sample', dists.OneHot.mode)
  obs, act = H.obs_space(image=(64, 64, 1)), H.act_space(True, 3)
  data = H.batch(obs, act, 3, 6, terminal_at=(5,))
  agents = {}
  for xla in (False, True):
    tf.random.set_seed(0)
    agents[xla] = agent_lib.Agent(H.tiny_config(jit=True, xla=xla), obs, act)
  graph, compiled = (tfutils.named_variables(agents[x]) for x in (False, True))
  for name, var in graph.items():
    compiled[name].assign(var)
  before = {name: var.numpy().copy() for name, var in graph.items()}
  metrics = {x: {k: float(v) for k, v in agents[x].train(data).items()}
             for x in (False, True)}
  # Losses and metrics: float32 sums in another order, measured 3e-6 apart.
  for key, value in metrics[False].items():
    assert metrics[True][key] == pytest.approx(value, rel=1e-4, abs=1e-6), key
  # Weights: Adam divides by sqrt(v) + eps, which magnifies the relative
  # error of gradients near eps; the changes agreed to 7.5e-4 of their size.
  for name, var in graph.items():
    change = var.numpy() - before[name]
    diff = compiled[name].numpy() - var.numpy()
    assert np.abs(diff).max() <= 1e-2 * np.abs(change).max() + 1e-7, name
  # The XLA policy traces once per mode, across episode starts.
  agent = agents[True]
  step = {'image': np.zeros((1, 64, 64, 1), np.uint8),
          'is_first': np.ones(1, bool)}
  state = None
  for i in range(6):
    step['is_first'] = np.array([i % 3 == 0])
    _, state = agent.policy(step, state, 'eval')
  assert agent._policy.experimental_get_tracing_count() == 1
