"""The distributions of DreamerV2's heads and latents.

The hot ones (categorical latents, one-hot actions, unit-variance Normal,
Bernoulli) are written out here: each is a few lines of float32 math, with no
TFP dispatch in the update. Continuous action distributions come from TFP.
Parts joins the distributions of an action of several parts.
All statistics are computed in float32 whatever the compute dtype.
"""

import math

import tensorflow as tf


def _sum_last(x, dims):
  return tf.reduce_sum(x, list(range(-dims, 0))) if dims else x


class OneHot:
  """Categorical over the last axis with one-hot samples.

  `sample` and `mode` carry straight-through gradients to the logits:
  one_hot(draw) + probs - stop_gradient(probs). `dims` extra trailing axes
  (before the class axis) are independent and summed over, as the 32
  categoricals of a latent state.
  """

  def __init__(self, logits, dims=0, dtype=None):
    self.logits = tf.cast(logits, tf.float32)
    self.dims = dims
    self._dtype = dtype or tf.float32
    self.log_probs = tf.nn.log_softmax(self.logits)
    self.probs = tf.nn.softmax(self.logits)

  def _straight_through(self, hard):
    return tf.cast(
        hard + self.probs - tf.stop_gradient(self.probs), self._dtype)

  def sample(self):
    # Gumbel-max draws an exact categorical sample with one argmax.
    uniform = tf.random.uniform(tf.shape(self.logits), 1e-6, 1 - 1e-6)
    gumbel = -tf.math.log(-tf.math.log(uniform))
    index = tf.argmax(self.logits + gumbel, -1)
    hard = tf.one_hot(index, self.logits.shape[-1], dtype=tf.float32)
    return self._straight_through(hard)

  def mode(self):
    index = tf.argmax(self.logits, -1)
    hard = tf.one_hot(index, self.logits.shape[-1], dtype=tf.float32)
    return self._straight_through(hard)

  def log_prob(self, value):
    value = tf.cast(value, tf.float32)
    return _sum_last(tf.reduce_sum(value * self.log_probs, -1), self.dims)

  def entropy(self):
    return _sum_last(-tf.reduce_sum(self.probs * self.log_probs, -1), self.dims)

  def kl(self, other):
    """KL(self || other), summed over the class axis and the `dims` axes."""
    kl = tf.reduce_sum(self.probs * (self.log_probs - other.log_probs), -1)
    return _sum_last(kl, self.dims)


class Gaussian:
  """Diagonal Normal with reparameterised samples (continuous latents)."""

  def __init__(self, mean, std, dims=1):
    self.mean_ = tf.cast(mean, tf.float32)
    self.std = tf.cast(std, tf.float32)
    self.dims = dims

  def sample(self):
    return self.mean_ + self.std * tf.random.normal(tf.shape(self.mean_))

  def mode(self):
    return self.mean_

  def log_prob(self, value):
    z = (tf.cast(value, tf.float32) - self.mean_) / self.std
    logp = (-0.5 * tf.square(z) - tf.math.log(self.std)
            - 0.5 * math.log(2 * math.pi))
    return _sum_last(logp, self.dims)

  def entropy(self):
    ent = 0.5 + 0.5 * math.log(2 * math.pi) + tf.math.log(self.std)
    return _sum_last(ent, self.dims)

  def kl(self, other):
    var_ratio = tf.square(self.std / other.std)
    diff = tf.square((self.mean_ - other.mean_) / other.std)
    kl = 0.5 * (var_ratio + diff - 1 - tf.math.log(var_ratio))
    return _sum_last(kl, self.dims)


class MSE:
  """Normal with unit standard deviation: the image, reward and value heads.

  The log-likelihood keeps the Normal's constant so logged losses compare with
  the original implementation's.
  """

  def __init__(self, mean, dims=0):
    self._mean = tf.cast(mean, tf.float32)
    self.dims = dims

  def mode(self):
    return self._mean

  def mean(self):
    return self._mean

  def log_prob(self, value):
    logp = -0.5 * tf.square(tf.cast(value, tf.float32) - self._mean)
    return _sum_last(logp - 0.5 * math.log(2 * math.pi), self.dims)


class Bernoulli:
  """Bernoulli on logits; `log_prob` accepts soft targets such as 0.999."""

  def __init__(self, logits, dims=0):
    self.logits = tf.cast(logits, tf.float32)
    self.dims = dims

  def mean(self):
    return tf.sigmoid(self.logits)

  def mode(self):
    return tf.cast(self.logits > 0, tf.float32)

  def log_prob(self, value):
    value = tf.cast(value, tf.float32)
    logp = (value * tf.math.log_sigmoid(self.logits) +
            (1 - value) * tf.math.log_sigmoid(-self.logits))
    return _sum_last(logp, self.dims)


class Uniform:
  """Uniform actions for the `random` exploration behaviour."""

  def __init__(self, shape, discrete):
    self._shape = shape
    self._discrete = discrete

  def sample(self):
    if self._discrete:
      index = tf.random.uniform(self._shape[:-1], 0, self._shape[-1], tf.int32)
      return tf.one_hot(index, self._shape[-1])
    return tf.random.uniform(self._shape, -1, 1)

  mode = sample

  def log_prob(self, value):
    n = self._shape[-1]
    return tf.fill(
        self._shape[:-1],
        -math.log(n) if self._discrete else -n * math.log(2.0))

  def entropy(self):
    return -self.log_prob(None)


class Parts:
  """Independent distributions over consecutive blocks of the last axis, as
  one: the actions of a space of several parts (envs.ActionParts), one
  distribution per part of `sizes[i]` values. Samples and modes are the
  parts' concatenated (float32, gradients kept); log-probabilities and
  entropies their sums, those of the joint action."""

  def __init__(self, parts, sizes):
    self.parts = list(parts)
    self.sizes = [int(size) for size in sizes]
    if len(self.parts) != len(self.sizes):
      raise ValueError(
          f'Parts takes one size per part, got {len(self.sizes)} sizes for '
          f'{len(self.parts)} parts.')

  def _join(self, values):
    return tf.concat([tf.cast(v, tf.float32) for v in values], -1)

  def sample(self):
    return self._join([part.sample() for part in self.parts])

  def mode(self):
    return self._join([part.mode() for part in self.parts])

  def split(self, value):
    """A [..., sum(sizes)] value as the parts' blocks."""
    return tf.split(value, self.sizes, -1)

  def log_prob(self, value):
    blocks = self.split(tf.cast(value, tf.float32))
    return tf.add_n([
        tf.cast(part.log_prob(block), tf.float32)
        for part, block in zip(self.parts, blocks)])

  def entropy(self):
    return tf.add_n(
        [tf.cast(part.entropy(), tf.float32) for part in self.parts])


class TruncNormal:
  """Normal truncated to [-1, 1]; samples clipped a little inside the bounds
  with straight-through gradients, as the original's `trunc_normal` actions."""

  def __init__(self, mean, std, low=-1.0, high=1.0, clip=1e-6):
    from tensorflow_probability import distributions as tfd
    self._dist = tfd.Independent(tfd.TruncatedNormal(
        tf.cast(mean, tf.float32), tf.cast(std, tf.float32), low, high), 1)
    self._low, self._high, self._clip = low, high, clip

  def _clipped(self, event):
    clipped = tf.clip_by_value(
        event, self._low + self._clip, self._high - self._clip)
    return event - tf.stop_gradient(event) + tf.stop_gradient(clipped)

  def sample(self):
    return self._clipped(self._dist.sample())

  def mode(self):
    # TFP's TruncatedNormal mode, clip(loc, low, high), as the original's
    # TruncNormalDist (which overrides only `sample`): tanh of the head's mean.
    return self._dist.mode()

  def log_prob(self, value):
    return self._dist.log_prob(tf.cast(value, tf.float32))

  def entropy(self):
    return self._dist.entropy()


class SampleDist:
  """Mode, mean and entropy estimated from samples (for `tanh_normal`)."""

  def __init__(self, dist, samples=100):
    self._dist = dist
    self._samples = samples

  def sample(self):
    return self._dist.sample()

  def mean(self):
    return tf.reduce_mean(self._dist.sample(self._samples), 0)

  def mode(self):
    sample = self._dist.sample(self._samples)
    logprob = self._dist.log_prob(sample)
    return _gather_best(sample, logprob)

  def log_prob(self, value):
    return self._dist.log_prob(value)

  def entropy(self):
    sample = self._dist.sample(self._samples)
    return -tf.reduce_mean(self._dist.log_prob(sample), 0)


def _gather_best(sample, logprob):
  # sample [S, B, A], logprob [S, B] -> the most likely sample per batch entry.
  best = tf.argmax(logprob, 0)
  sample = tf.transpose(sample, [1, 0, 2])
  return tf.gather(sample, best, batch_dims=1)


def _clipped_tanh():
  """TFP's Tanh bijector with the original's TanhBijector inverse: y inside
  [-1, 1] is clipped to +-0.99999997 before atanh, so an action on the bound
  has a finite log-probability."""
  from tensorflow_probability import bijectors as tfb

  class ClippedTanh(tfb.Tanh):

    def _inverse(self, y):
      dtype = y.dtype
      y = tf.cast(y, tf.float32)
      y = tf.where(tf.abs(y) <= 1.0,
                   tf.clip_by_value(y, -0.99999997, 0.99999997), y)
      return tf.cast(tf.atanh(y), dtype)

  return ClippedTanh()


def tanh_normal(mean, std, min_std, init_std=0.0):
  from tensorflow_probability import distributions as tfd
  mean = 5 * tf.tanh(tf.cast(mean, tf.float32) / 5)
  std = tf.nn.softplus(tf.cast(std, tf.float32) + init_std) + min_std
  dist = tfd.TransformedDistribution(tfd.Normal(mean, std), _clipped_tanh())
  return SampleDist(tfd.Independent(dist, 1))


def normal(mean, std):
  from tensorflow_probability import distributions as tfd
  dist = tfd.Normal(tf.cast(mean, tf.float32), tf.cast(std, tf.float32))
  return tfd.Independent(dist, 1)
