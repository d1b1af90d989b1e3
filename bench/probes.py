"""A world-model probe that only the image can solve (used by
tests/test_world_model.py and bench/latent_square.py).

Dark 64x64 frames with one bright 8x8 square per sequence, at a random
position that stays put; the actions are random and unrelated. The world
model (the `atari` config with a smaller network: deter and hidden 128, conv
depth 16, batch 16 x 10) trains on fresh batches, and every `eval_every`
updates the posterior's reconstruction of 32 held-out sequences is scored
(per-pixel MSE, pixels in [0, 1]) against the floor of predicting the mean
frame. Until the latent carries the square the reconstruction stays at the
floor.
"""

import json
import sys
import time

SMALL = ['--rssm.deter', '128', '--rssm.hidden', '128',
         '--encoder.cnn_depth', '16', '--decoder.cnn_depth', '16',
         '--dataset.batch', '16', '--dataset.length', '10']


def square_batch(rng, batch, length, actions=3):
  """Frames [batch, length, 64, 64, 1] uint8 with one 255-valued 8x8 square per
  sequence at a random fixed position, random one-hot actions, is_first at 0."""
  import numpy as np
  image = np.zeros((batch, length, 64, 64, 1), np.uint8)
  for b in range(batch):
    y, x = rng.integers(0, 57, 2)
    image[b, :, y:y + 8, x:x + 8] = 255
  first = np.zeros((batch, length), bool)
  first[:, 0] = True
  zeros = np.zeros((batch, length), bool)
  return {
      'image': image, 'reward': np.zeros((batch, length), np.float32),
      'action': np.eye(actions, dtype=np.float32)[
          rng.integers(0, actions, (batch, length))],
      'is_first': first, 'is_last': zeros, 'is_terminal': zeros}


def obs_space():
  import gymnasium
  import numpy as np
  flag = gymnasium.spaces.Box(0, 1, (), bool)
  return {'image': gymnasium.spaces.Box(0, 255, (64, 64, 1), np.uint8),
          'reward': gymnasium.spaces.Box(-np.inf, np.inf, (), np.float32),
          'is_first': flag, 'is_last': flag, 'is_terminal': flag}


def run(updates, eval_every, precision, overrides, below=0.6, seed=0):
  """Trains and returns the result dict (also used by tests)."""
  import numpy as np
  import tensorflow as tf
  from common import config as configlib
  from common import nets
  from dreamerv2 import agent as agentlib
  config = configlib.parse(
      ['--configs', 'defaults', 'atari', '--precision', str(precision)]
      + SMALL + list(overrides))
  nets.set_precision(config.precision)
  tf.random.set_seed(seed)
  rng = np.random.default_rng(seed)
  wm = agentlib.WorldModel(
      config, obs_space(), 3, tf.Variable(0, dtype=tf.int64))
  train = tf.function(lambda data: wm.train(data)[1])

  @tf.function
  def reconstruct(data):
    data = wm.preprocess(data)
    post, _ = wm.rssm.observe(
        wm.encoder(data), data['action'], data['is_first'], sample=False)
    return wm.heads['decoder'](wm.rssm.get_feat(post))['image'].mode() + 0.5

  held = square_batch(
      np.random.default_rng(seed + 1), 32, config.dataset.length)
  truth = held['image'] / 255.0
  floor = float(np.mean((truth.mean((0, 1), keepdims=True) - truth) ** 2))
  held = {k: tf.constant(v) for k, v in held.items()}
  curve, recent, norms, start = [], [], [], time.time()
  for i in range(updates):
    data = square_batch(rng, config.dataset.batch, config.dataset.length)
    metrics = train({k: tf.constant(v) for k, v in data.items()})
    recent = (recent + [{k: float(metrics[k])
                         for k in ('image_loss', 'kl_loss', 'post_ent')}])[-10:]
    norms.append(float(metrics['model_grad_norm']))
    if (i + 1) % eval_every == 0 or i + 1 == updates:
      recon = np.clip(np.asarray(reconstruct(held), np.float32), 0, 1)
      error = float(np.mean((recon - truth) ** 2))
      curve.append({
          'updates': i + 1, 'recon': round(error, 6),
          'ratio': round(error / floor, 3),
          **{k: round(float(np.mean([m[k] for m in recent])), 3)
             for k in recent[0]},
          # The largest gradient norm (before clipping) since the last row.
          'grad_norm_max': round(max(norms), 1)})
      norms = []
      print(json.dumps(curve[-1]), file=sys.stderr, flush=True)
  first = next((row['updates'] for row in curve if row['ratio'] < below), None)
  return {
      'updates': updates, 'precision': precision, 'config': list(overrides),
      'lr': config.model_opt.lr, 'floor': round(floor, 6), 'below': below,
      'first_below': first, 'final_ratio': curve[-1]['ratio'], 'curve': curve,
      'train_s': round(time.time() - start, 1)}
