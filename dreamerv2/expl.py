"""Exploration behaviours: Random, Plan2Explore and ModelLoss.

Each has an `actor` (for the policy's `explore` mode) and `train(start,
context, data)` returning metrics; Plan2Explore and ModelLoss train their own
actor-critic in imagination on an intrinsic reward.
"""

import math

import tensorflow as tf

from common import choices
from common import dists
from common import nets
from common import tfutils
from dreamerv2 import agent


class Random(tf.Module):
  """Uniform actions: one-hot or in [-1, 1], per part for an action of
  several parts (`discrete` holds them then, see agent.ActorCritic)."""

  def __init__(self, config, action_size, discrete, wm, tfstep, reward):
    super().__init__(name='random')
    self._size, self._discrete = action_size, discrete
    self._parts = agent.action_parts(discrete)

  def actor(self, feat):
    batch = tf.shape(feat)[:-1]
    if self._parts:
      return dists.Parts(
          [dists.Uniform(tf.concat([batch, [size]], 0), kind == 'discrete')
           for _, kind, size in self._parts],
          [size for _, _, size in self._parts])
    shape = tf.concat([batch, [self._size]], 0)
    return dists.Uniform(shape, self._discrete)

  def train(self, start, context, data):
    return {}


class Plan2Explore(tf.Module):
  """Intrinsic reward = disagreement (std over members, averaged over
  dimensions) of an ensemble of one-step predictors of `disag_target`."""

  def __init__(self, config, action_size, discrete, wm, tfstep, reward):
    super().__init__(name='plan2explore')
    self.config = config
    self.reward = reward
    self.wm = wm
    self.ac = agent.ActorCritic(
        config, action_size, discrete, wm.feat_size, tfstep,
        name='expl_actor_critic')
    self.actor = self.ac.actor
    choices.check('disag_target', config.disag_target, choices.DISAG_TARGETS)
    size = {
        'embed': wm.encoder.embed_size, 'stoch': wm.rssm.stoch_size,
        'deter': config.rssm.deter, 'feat': wm.feat_size,
    }[config.disag_target]
    inp = wm.feat_size + (action_size if config.disag_action_cond else 0)
    head = dict(config.expl_head)
    if head.pop('dist', 'mse') != 'mse':
      raise ValueError(
          f'expl_head.dist must be mse for plan2explore (its members predict '
          f'the mean of a unit Normal), got {config.expl_head.dist!r}')
    self.ensemble = Ensemble(config.disag_models, inp, size, **head)
    self.opt = tfutils.Optimizer(
        'ensemble', self.ensemble.trainable_variables, **config.expl_opt)
    self.extr_rewnorm = tfutils.StreamNorm(**config.expl_reward_norm)
    self.intr_rewnorm = tfutils.StreamNorm(**config.expl_reward_norm)

  def train(self, start, context, data):
    metrics = {}
    stoch = start['stoch']
    if self.config.rssm.discrete:
      stoch = tf.reshape(stoch, tf.concat([tf.shape(stoch)[:-2], [-1]], 0))
    target = {
        'embed': context['embed'], 'stoch': stoch,
        'deter': start['deter'], 'feat': context['feat'],
    }[self.config.disag_target]
    inputs = context['feat']
    if self.config.disag_action_cond:
      inputs = tf.concat([inputs, nets.cast(data['action'])], -1)
    metrics.update(self._train_ensemble(inputs, target))
    metrics.update(self.ac.train(
        self.wm, start, data['is_terminal'], self._intr_reward))
    return metrics

  def _intr_reward(self, seq):
    inputs = seq['feat']
    if self.config.disag_action_cond:
      inputs = tf.concat([inputs, nets.cast(seq['action'])], -1)
    preds = self.ensemble(inputs)                            # [K, ..., size]
    disag = tf.reduce_mean(tf.math.reduce_std(preds, 0), -1)
    if self.config.disag_log:
      disag = tf.math.log(disag)
    reward = self.config.expl_intr_scale * self.intr_rewnorm(disag)[0]
    if self.config.expl_extr_scale:
      reward += self.config.expl_extr_scale * self.extr_rewnorm(
          self.reward(seq))[0]
    return reward

  def _train_ensemble(self, inputs, targets):
    offset = self.config.disag_offset
    if offset:
      targets = targets[:, offset:]
      inputs = inputs[:, :-offset]
    targets = tf.stop_gradient(tf.cast(targets, tf.float32))
    inputs = tf.stop_gradient(inputs)
    with tf.GradientTape() as tape:
      preds = self.ensemble(inputs)                          # [K, B, T, size]
      # Unit-variance Normal log-likelihood per member, summed over members.
      like = dists.MSE(preds, 1).log_prob(targets[None])
      loss = -tf.reduce_sum(tf.reduce_mean(like, [1, 2]))
    return self.opt(tape, loss)


class ModelLoss(tf.Module):
  """Intrinsic reward = a head's prediction of the world model's KL."""

  def __init__(self, config, action_size, discrete, wm, tfstep, reward):
    super().__init__(name='model_loss')
    self.config = config
    self.reward = reward
    self.wm = wm
    self.ac = agent.ActorCritic(
        config, action_size, discrete, wm.feat_size, tfstep,
        name='expl_actor_critic')
    self.actor = self.ac.actor
    self.head = nets.MLP(wm.feat_size, [], **config.expl_head)
    self.opt = tfutils.Optimizer(
        'intr_head', self.head.trainable_variables, **config.expl_opt)

  def train(self, start, context, data):
    metrics = {}
    target = tf.stop_gradient(
        tf.cast(context[self.config.expl_model_loss], tf.float32))
    with tf.GradientTape() as tape:
      loss = -tf.reduce_mean(
          self.head(tf.stop_gradient(context['feat'])).log_prob(target))
    metrics.update(self.opt(tape, loss))
    metrics.update(self.ac.train(
        self.wm, start, data['is_terminal'], self._intr_reward))
    return metrics

  def _intr_reward(self, seq):
    reward = self.config.expl_intr_scale * self.head(seq['feat']).mode()
    if self.config.expl_extr_scale:
      reward += self.config.expl_extr_scale * self.reward(seq)
    return reward


class Ensemble(tf.Module):
  """K MLPs (the original's `expl_head` MLPs: Dense -> norm -> act per hidden
  layer, then a Dense mean) with stacked weights, evaluated in one batched
  matmul per layer: x [..., inp] -> mean predictions [K, ..., out]."""

  def __init__(self, members, inp, out, layers, units, act='elu',
               norm='none'):
    super().__init__(name='ensemble')
    choices.check('expl_head.norm', norm, choices.NORMS)
    self.kernels, self.biases, self.scales, self.offsets = [], [], [], []
    sizes = [inp] + [units] * layers + [out]
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
      limit = math.sqrt(6.0 / (a + b))
      self.kernels.append(tf.Variable(
          tf.random.uniform([members, a, b], -limit, limit), name=f'kernel{i}'))
      self.biases.append(
          tf.Variable(tf.zeros([members, 1, b]), name=f'bias{i}'))
      if norm == 'layer' and i < layers:  # Layer norm per member, as LayerNorm.
        self.scales.append(
            tf.Variable(tf.ones([members, 1, b]), name=f'scale{i}'))
        self.offsets.append(
            tf.Variable(tf.zeros([members, 1, b]), name=f'offset{i}'))
    self._members = members
    self._act = nets.get_act(act)

  def __call__(self, x):
    shape = tf.shape(x)[:-1]
    x = nets.cast(tf.reshape(x, [1, -1, x.shape[-1]]))
    x = tf.tile(x, [self._members, 1, 1])
    for i, (kernel, bias) in enumerate(zip(self.kernels, self.biases)):
      x = tf.matmul(x, nets.cast(kernel)) + nets.cast(bias)
      if i < len(self.kernels) - 1:
        if self.scales:
          dtype = x.dtype
          x = tf.cast(x, tf.float32)
          mean, var = tf.nn.moments(x, [-1], keepdims=True)
          x = tf.cast((x - mean) * tf.math.rsqrt(var + 1e-3) * self.scales[i]
                      + self.offsets[i], dtype)
        x = self._act(x)
    x = tf.cast(x, tf.float32)
    return tf.reshape(x, tf.concat([[self._members], shape, [x.shape[-1]]], 0))
