"""Networks of DreamerV2: layers, encoder, decoder, MLP heads and the RSSM.

Layers are written on `tf.Variable` inside `tf.Module`, so every weight is
tracked, trained and checkpointed, and each layer creates its weights when it
is built (shapes are known from the config), before the first call.
Weights are float32; every layer casts its inputs and weights to the compute
dtype (`set_precision`) for the matmul or convolution, and statistics that
need the range (layer norm, logits, losses) are computed in float32. The
faster CPU forms of some ops (bias gradients in bfloat16, convolutions of
small maps) are in common/kernels.py, each tested equal to TensorFlow's op.
"""

import contextlib
import math
import re
import threading

import numpy as np
import tensorflow as tf

from common import choices
from common import dists
from common import kernels

# The compute dtype: a process-wide default (set_precision) that a thread can
# override for a block (compute_in). The Agent runs its construction and every
# call in `compute_in(agent.dtype)`, so its precision is its own and nothing
# outside it changes.
_DEFAULT_DTYPE = tf.float32
_LOCAL = threading.local()


def dtype_for(precision, device=None):
  """The compute dtype of a precision: 32 -> float32; 16 -> bfloat16 on a CPU
  and float16 on a GPU (where the optimizer then scales the loss). `device`
  ('cpu' or 'gpu') overrides the detection, e.g. for tests."""
  choices.check('precision', precision, choices.PRECISIONS)
  if device is None:
    device = 'gpu' if tf.config.list_physical_devices('GPU') else 'cpu'
  if precision == 32:
    return tf.float32
  return tf.float16 if device == 'gpu' else tf.bfloat16


def set_precision(precision, device=None):
  """Sets the process-wide default compute dtype (see dtype_for); returns it."""
  global _DEFAULT_DTYPE
  _DEFAULT_DTYPE = dtype_for(precision, device)
  return _DEFAULT_DTYPE


@contextlib.contextmanager
def compute_in(dtype):
  """Computes in `dtype` inside the block (this thread only); restores after."""
  previous = getattr(_LOCAL, 'dtype', None)
  _LOCAL.dtype = dtype
  try:
    yield dtype
  finally:
    _LOCAL.dtype = previous


def compute_dtype():
  return getattr(_LOCAL, 'dtype', None) or _DEFAULT_DTYPE


def cast(x):
  return tf.cast(x, compute_dtype())


def get_act(name):
  if name == 'none':
    return tf.identity
  if name == 'mish':
    return lambda x: x * tf.math.tanh(tf.nn.softplus(x))
  if hasattr(tf.nn, name):
    return getattr(tf.nn, name)
  if hasattr(tf, name):
    return getattr(tf, name)
  raise choices.BadChoice(
      f"activation {name!r} is not one of: {', '.join(choices.ACTIVATIONS)}, "
      f"or a function of tf.nn or tf")


def _glorot(shape, fan_in, fan_out):
  limit = math.sqrt(6.0 / (fan_in + fan_out))
  return tf.random.uniform(shape, -limit, limit, tf.float32)


class Dense(tf.Module):

  def __init__(self, inp, out, bias=True, trainable=True, name=None):
    super().__init__(name=name)
    self.kernel = tf.Variable(
        _glorot([inp, out], inp, out), trainable=trainable, name='kernel')
    self.bias = tf.Variable(
        tf.zeros([out]), trainable=trainable, name='bias') if bias else None

  def __call__(self, x):
    x = cast(x)
    shape = tf.shape(x)
    flat = tf.reshape(x, [-1, x.shape[-1]]) if x.shape.rank != 2 else x
    y = tf.matmul(flat, cast(self.kernel))
    if self.bias is not None:
      y = kernels.add_bias(y, self.bias)
    if x.shape.rank != 2:
      y = tf.reshape(y, tf.concat([shape[:-1], [y.shape[-1]]], 0))
    return y


class Conv(tf.Module):
  """Conv2D with VALID padding, or its transpose with `transpose=True`."""

  def __init__(self, inp, out, kernel, stride=2, transpose=False, name=None):
    super().__init__(name=name)
    fan_in, fan_out = kernel * kernel * inp, kernel * kernel * out
    # conv2d_transpose kernels are [k, k, out, in].
    shape = ([kernel, kernel, out, inp] if transpose
             else [kernel, kernel, inp, out])
    self.kernel = tf.Variable(_glorot(shape, fan_in, fan_out), name='kernel')
    self.bias = tf.Variable(tf.zeros([out]), name='bias')
    self._stride, self._transpose = stride, transpose

  def __call__(self, x):
    x, kernel = cast(x), cast(self.kernel)
    if self._transpose:
      y = kernels.conv2d_transpose(x, kernel, self._stride)
    else:
      y = kernels.conv2d(x, kernel, self._stride)
    return kernels.add_bias(y, self.bias)


class LayerNorm(tf.Module):
  """Layer norm over the last axis, computed in float32."""

  def __init__(self, size, eps=1e-3, trainable=True, name=None):
    super().__init__(name=name)
    self.scale = tf.Variable(tf.ones([size]), trainable=trainable, name='scale')
    self.offset = tf.Variable(
        tf.zeros([size]), trainable=trainable, name='offset')
    self._eps = eps

  def __call__(self, x):
    dtype = x.dtype
    x = tf.cast(x, tf.float32)
    mean, var = tf.nn.moments(x, [-1], keepdims=True)
    x = (x - mean) * tf.math.rsqrt(var + self._eps) * self.scale + self.offset
    return tf.cast(x, dtype)


def Norm(kind, size, trainable=True):
  choices.check('norm', kind, choices.NORMS)
  return LayerNorm(size, trainable=trainable) if kind == 'layer' else None


class DenseStack(tf.Module):
  """Dense -> norm -> activation, `len(units)` times."""

  def __init__(
      self, inp, units, act='elu', norm='none', trainable=True, name=None):
    super().__init__(name=name)
    self.layers, self.norms = [], []
    for width in units:
      self.layers.append(Dense(inp, width, trainable=trainable))
      self.norms.append(Norm(norm, width, trainable))
      inp = width
    self.size = inp
    self._act = get_act(act)

  def __call__(self, x):
    x = cast(x)
    for layer, norm in zip(self.layers, self.norms):
      x = layer(x)
      x = norm(x) if norm else x
      x = self._act(x)
    return x


class DistHead(tf.Module):
  """Maps features to a distribution over an output of `shape`.

  With `parts` (((name, kind, size), ...), an action of several parts: see
  envs.ActionParts), one head per part in `self.parts`, onehot for a
  discrete part and `dist` for a continuous one, joined as a dists.Parts
  over the concatenation.
  """

  def __init__(self, inp, shape, dist='mse', min_std=0.1, init_std=0.0,
               trainable=True, name=None, parts=None):
    super().__init__(name=name)
    self._shape = tuple(shape)
    self._dist, self._min_std, self._init_std = dist, min_std, init_std
    self.parts = None
    if parts:
      self._sizes = [int(size) for _, _, size in parts]
      if (sum(self._sizes),) != self._shape:
        raise ValueError(
            f'The action parts {list(parts)} add up to '
            f'{sum(self._sizes)} values, not the shape {self._shape}.')
      self.parts = [
          DistHead(inp, (int(size),),
                   'onehot' if kind == 'discrete' else dist, min_std,
                   init_std, trainable)
          for _, kind, size in parts]
      return
    size = int(np.prod(self._shape))
    self.out = Dense(inp, size, trainable=trainable)
    choices.check('dist', dist, choices.DISTS)
    if dist in ('normal', 'tanh_normal', 'trunc_normal'):
      self.std = Dense(inp, size, trainable=trainable)

  def __call__(self, x):
    if self.parts:
      return dists.Parts([head(x) for head in self.parts], self._sizes)
    shape = tf.concat([tf.shape(x)[:-1], self._shape], 0)
    out = tf.reshape(tf.cast(self.out(x), tf.float32), shape)
    dims = len(self._shape)
    if self._dist == 'mse':
      return dists.MSE(out, dims)
    if self._dist == 'binary':
      return dists.Bernoulli(out, dims)
    if self._dist == 'onehot':
      return dists.OneHot(out, dtype=compute_dtype())
    std = tf.reshape(tf.cast(self.std(x), tf.float32), shape)
    if self._dist == 'trunc_normal':
      std = 2 * tf.sigmoid((std + self._init_std) / 2) + self._min_std
      return dists.TruncNormal(tf.tanh(out), std)
    if self._dist == 'tanh_normal':
      return dists.tanh_normal(out, std, self._min_std, self._init_std)
    return dists.normal(out, std)


class MLP(tf.Module):
  """The heads: `layers` x `units` dense stack, then a distribution."""

  def __init__(self, inp, shape, layers, units, act='elu', norm='none',
               trainable=True, name=None, **out):
    super().__init__(name=name)
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    self.stack = DenseStack(inp, [units] * layers, act, norm, trainable)
    self.head = DistHead(self.stack.size, shape, trainable=trainable, **out)

  def __call__(self, features):
    return self.head(self.stack(features))


class Encoder(tf.Module):
  """Conv encoder for image keys and MLP encoder for vector keys.

  `shapes` maps observation keys to shapes; keys matching `cnn_keys` with 3
  dims go through 4 stride-2 convolutions (kernel 4, depths 48*(1,2,4,8)),
  keys matching `mlp_keys` with 1 dim through a dense stack.
  """

  def __init__(self, shapes, cnn_keys=r'.*', mlp_keys=r'.*', act='elu',
               norm='none', cnn_depth=48, cnn_kernels=(4, 4, 4, 4),
               mlp_layers=(400, 400, 400, 400), name=None):
    super().__init__(name=name)
    self.cnn_keys = [k for k, v in shapes.items()
                     if re.match(cnn_keys, k) and len(v) == 3]
    self.mlp_keys = [k for k, v in shapes.items()
                     if re.match(mlp_keys, k) and len(v) == 1]
    if not self.cnn_keys and not self.mlp_keys:
      raise ValueError(
          f'the encoder selects no observation: cnn_keys {cnn_keys!r} and '
          f'mlp_keys {mlp_keys!r} match none of {dict(shapes)}')
    self._act = get_act(act)
    self.convs, self.conv_norms = [], []
    self.embed_size = 0
    if self.cnn_keys:
      height, width = shapes[self.cnn_keys[0]][:2]
      channels = sum(shapes[k][-1] for k in self.cnn_keys)
      for i, kernel in enumerate(cnn_kernels):
        depth = 2 ** i * cnn_depth
        self.convs.append(Conv(channels, depth, kernel, 2))
        self.conv_norms.append(Norm(norm, depth))
        channels = depth
        height, width = (height - kernel) // 2 + 1, (width - kernel) // 2 + 1
      self.embed_size += height * width * channels
    if self.mlp_keys:
      size = sum(shapes[k][0] for k in self.mlp_keys)
      self.mlp = DenseStack(size, mlp_layers, act, norm)
      self.embed_size += self.mlp.size

  def __call__(self, data):
    """data: preprocessed observations [..., *shape] -> embedding [..., E]."""
    key = (self.cnn_keys + self.mlp_keys)[0]
    ndims = 3 if key in self.cnn_keys else 1
    batch_shape = tf.shape(data[key])[:-ndims]
    outputs = []
    if self.cnn_keys:
      x = tf.concat([cast(data[k]) for k in self.cnn_keys], -1)
      x = tf.reshape(x, tf.concat([[-1], tf.shape(x)[-3:]], 0))
      for conv, norm in zip(self.convs, self.conv_norms):
        x = conv(x)
        x = norm(x) if norm else x
        x = self._act(x)
      outputs.append(tf.reshape(x, [-1, int(np.prod(x.shape[1:]))]))
    if self.mlp_keys:
      x = tf.concat([cast(data[k]) for k in self.mlp_keys], -1)
      outputs.append(self.mlp(tf.reshape(x, [-1, x.shape[-1]])))
    out = tf.concat(outputs, -1)
    return tf.reshape(out, tf.concat([batch_shape, [self.embed_size]], 0))


class Decoder(tf.Module):
  """Transposed-conv decoder for image keys, dense stack for vector keys.

  Images: Dense to 32*depth, reshape to 1x1, transposed convolutions with
  kernels 5, 5, 6, 6 and stride 2 give 64x64; each pixel is a unit-variance
  Normal (log-likelihood summed over H, W, C).
  """

  def __init__(self, shapes, inp, cnn_keys=r'.*', mlp_keys=r'.*', act='elu',
               norm='none', cnn_depth=48, cnn_kernels=(5, 5, 6, 6),
               mlp_layers=(400, 400, 400, 400), name=None):
    super().__init__(name=name)
    self._shapes = dict(shapes)
    self.cnn_keys = [k for k, v in shapes.items()
                     if re.match(cnn_keys, k) and len(v) == 3]
    self.mlp_keys = [k for k, v in shapes.items()
                     if re.match(mlp_keys, k) and len(v) == 1]
    self._act = get_act(act)
    self._depth = cnn_depth
    if self.cnn_keys:
      channels = sum(shapes[k][-1] for k in self.cnn_keys)
      self.convin = Dense(inp, 32 * cnn_depth)
      self.convs, self.conv_norms = [], []
      depth_in, size = 32 * cnn_depth, 1
      for i, kernel in enumerate(cnn_kernels):
        last = i == len(cnn_kernels) - 1
        depth = (channels if last
                 else 2 ** (len(cnn_kernels) - i - 2) * cnn_depth)
        self.convs.append(Conv(depth_in, depth, kernel, 2, transpose=True))
        self.conv_norms.append(None if last else Norm(norm, depth))
        depth_in, size = depth, (size - 1) * 2 + kernel
      want = tuple(shapes[self.cnn_keys[0]][:2])
      if (size, size) != want:
        raise ValueError(
            f'decoder kernels {tuple(cnn_kernels)} give {size}x{size} images, '
            f'but the observation is {want[0]}x{want[1]} (use 64x64 images)')
    if self.mlp_keys:
      self.mlp = DenseStack(inp, mlp_layers, act, norm)
      self.mlp_heads = {
          k: DistHead(self.mlp.size, shapes[k]) for k in self.mlp_keys}

  def __call__(self, features):
    """features [..., F] -> dict key -> distribution over [..., *shape]."""
    batch_shape = tf.shape(features)[:-1]
    outputs = {}
    if self.cnn_keys:
      x = self.convin(tf.reshape(cast(features), [-1, features.shape[-1]]))
      x = tf.reshape(x, [-1, 1, 1, 32 * self._depth])
      for i, (conv, norm) in enumerate(zip(self.convs, self.conv_norms)):
        x = conv(x)
        if i < len(self.convs) - 1:
          x = norm(x) if norm else x
          x = self._act(x)
      x = tf.reshape(x, tf.concat([batch_shape, tf.shape(x)[1:]], 0))
      sizes = [self._shapes[k][-1] for k in self.cnn_keys]
      for key, mean in zip(self.cnn_keys, tf.split(x, sizes, -1)):
        outputs[key] = dists.MSE(mean, 3)
    if self.mlp_keys:
      x = self.mlp(features)
      for key in self.mlp_keys:
        outputs[key] = self.mlp_heads[key](x)
    return outputs


class GRUCell(tf.Module):
  """Layer-normalised GRU: one Dense (with bias, as the original's
  `use_bias=norm is not None`) over concat(input, h) gives the reset,
  candidate and update parts; layer norm over them; update gate bias -1."""

  def __init__(self, inp, size, update_bias=-1.0, name=None):
    super().__init__(name=name)
    self.size = size
    self.dense = Dense(inp + size, 3 * size)
    self.norm = LayerNorm(3 * size)
    self._update_bias = update_bias

  def __call__(self, x, state):
    """x [B, inp], state [B, size] float32 -> new state float32."""
    parts = tf.matmul(
        tf.concat([cast(x), cast(state)], -1), cast(self.dense.kernel))
    # The bias is added in float32, so its gradient is summed in float32.
    parts = self.norm(tf.cast(parts, tf.float32) + self.dense.bias)
    reset, cand, update = tf.split(parts, 3, -1)
    reset = tf.sigmoid(reset)
    cand = tf.tanh(reset * cand)
    update = tf.sigmoid(update + self._update_bias)
    return update * cand + (1 - update) * state


class RSSM(tf.Module):
  """Recurrent state-space model with categorical (or Gaussian) latents.

  State: `deter` h (GRU, float32), `stoch` z (one-hot [B, stoch, discrete], or
  [B, stoch] when discrete is 0), and the statistics of z's distribution
  (`logit`, or `mean`/`std`). Feature = concat(flatten(z), h).

    prior:     x = act(norm(Dense(concat(z_prev, a_prev)))); h = GRU(x, h_prev)
               z ~ Dense(act(norm(Dense(h))))
    posterior: z ~ Dense(act(norm(Dense(concat(h, embed)))))
  """

  def __init__(self, action_size, embed_size, hidden=1024, deter=1024,
               stoch=32, discrete=32, act='elu', norm='none',
               std_act='sigmoid2', min_std=0.1, ensemble=1, name=None):
    super().__init__(name=name)
    if int(ensemble) < 1:
      raise ValueError(f'rssm.ensemble must be at least 1, got {ensemble}')
    self._ensemble = int(ensemble)
    self._stoch, self._deter, self._discrete = stoch, deter, discrete
    self._act = get_act(act)
    self._std_act = choices.check('rssm.std_act', std_act, choices.STD_ACTS)
    self._min_std = min_std
    self.stoch_size = stoch * discrete if discrete else stoch
    self.feat_size = self.stoch_size + deter
    stats = stoch * discrete if discrete else 2 * stoch
    self.img_in = Dense(self.stoch_size + action_size, hidden)
    self.img_in_norm = Norm(norm, hidden)
    self.cell = GRUCell(hidden, deter)
    self.img_out = Dense(deter, hidden)
    self.img_out_norm = Norm(norm, hidden)
    self.img_dist = Dense(hidden, stats)
    # rssm.ensemble > 1, as the original's EnsembleRSSM: more prior output
    # heads (member 0 is the one above); each prior step uses one at random.
    self.img_members = [
        (Dense(deter, hidden), Norm(norm, hidden), Dense(hidden, stats))
        for _ in range(self._ensemble - 1)]
    self.obs_out = Dense(deter + embed_size, hidden)
    self.obs_out_norm = Norm(norm, hidden)
    self.obs_dist = Dense(hidden, stats)

  def initial(self, batch):
    state = {'deter': tf.zeros([batch, self._deter], tf.float32)}
    if self._discrete:
      state['logit'] = tf.zeros(
          [batch, self._stoch, self._discrete], tf.float32)
      state['stoch'] = tf.zeros(
          [batch, self._stoch, self._discrete], compute_dtype())
    else:
      state['mean'] = tf.zeros([batch, self._stoch], tf.float32)
      state['std'] = tf.zeros([batch, self._stoch], tf.float32)
      state['stoch'] = tf.zeros([batch, self._stoch], compute_dtype())
    return state

  def get_feat(self, state):
    stoch = cast(state['stoch'])
    shape = tf.concat(
        [tf.shape(stoch)[:-2 if self._discrete else -1], [self.stoch_size]], 0)
    return tf.concat([tf.reshape(stoch, shape), cast(state['deter'])], -1)

  def get_dist(self, state):
    if self._discrete:
      return dists.OneHot(state['logit'], dims=1, dtype=compute_dtype())
    return dists.Gaussian(state['mean'], state['std'])

  def _stats(self, x, layer):
    x = tf.cast(layer(x), tf.float32)
    if self._discrete:
      shape = tf.concat([tf.shape(x)[:-1], [self._stoch, self._discrete]], 0)
      return {'logit': tf.reshape(x, shape)}
    mean, std = tf.split(x, 2, -1)
    std = {
        'softplus': lambda: tf.nn.softplus(std),
        'sigmoid': lambda: tf.sigmoid(std),
        'sigmoid2': lambda: 2 * tf.sigmoid(std / 2),
    }[self._std_act]()
    return {'mean': mean, 'std': std + self._min_std}

  def _sample(self, stats, sample):
    dist = self.get_dist(stats)
    return cast(dist.sample() if sample else dist.mode())

  def _hidden(self, x, norm):
    return self._act(norm(x) if norm else x)

  def img_step(self, prev_state, prev_action, sample=True):
    """One prior step: (z, h)_{t-1}, a_{t-1} -> prior state at t."""
    deter = self._recurrent(prev_state, prev_action)
    stats = self._prior_stats(deter)
    return {'stoch': self._sample(stats, sample), 'deter': deter, **stats}

  def _recurrent(self, prev_state, prev_action):
    """h_t = GRU(act(norm(Dense(concat(z_{t-1}, a_{t-1})))), h_{t-1})."""
    x = tf.concat(
        [cast(self._flat(prev_state['stoch'])), cast(prev_action)], -1)
    x = self._hidden(self.img_in(x), self.img_in_norm)
    return self.cell(x, prev_state['deter'])

  def _prior_stats(self, deter, steps=None):
    """The prior's statistics from h; with an ensemble, of one member drawn
    at random per call, or per step of axis 1 when `steps` is given."""
    x = self._hidden(self.img_out(deter), self.img_out_norm)
    stats = self._stats(x, self.img_dist)
    if self._ensemble == 1:
      return stats
    members = [stats] + [
        self._stats(self._hidden(out(deter), norm), dist)
        for out, norm, dist in self.img_members]
    # [K, ...]
    stacked = {k: tf.stack([m[k] for m in members], 0) for k in stats}
    if steps is None:
      index = tf.random.uniform((), 0, self._ensemble, tf.int32)
      return {k: v[index] for k, v in stacked.items()}
    index = tf.random.uniform((steps,), 0, self._ensemble, tf.int32)
    # [K, B, T, ...] -> [T, K, B, ...], pick member index[t] for step t.
    pick = lambda v: tf.gather(
        tf.transpose(v, [2, 0, 1] + list(range(3, v.shape.rank))), index,
        batch_dims=1)
    return {k: tf.transpose(pick(v), [1, 0] + list(range(2, v.shape.rank - 1)))
            for k, v in stacked.items()}

  def obs_step(self, prev_state, prev_action, embed, is_first, sample=True,
               with_prior=True):
    """One filtering step; the previous state and action are zeroed where
    `is_first`. Returns (posterior, prior); the prior is None without
    `with_prior` (acting needs only the posterior)."""
    prev_state, prev_action = _mask((prev_state, prev_action), is_first)
    if with_prior:
      prior = self.img_step(prev_state, prev_action, sample)
      deter = prior['deter']
    else:
      prior, deter = None, self._recurrent(prev_state, prev_action)
    x = self._hidden(self.obs_out(tf.concat([cast(deter), cast(embed)], -1)),
                     self.obs_out_norm)
    stats = self._stats(x, self.obs_dist)
    post = {'stoch': self._sample(stats, sample), 'deter': deter, **stats}
    return post, prior

  def observe(self, embed, action, is_first, state=None, sample=True):
    """Filter a batch of sequences: embed [B, T, E], action [B, T, A] (the
    action before each step), is_first [B, T] -> posterior and prior states
    with [B, T] leading axes.

    Same math as T calls of `obs_step`, arranged for speed: the parts of the
    input layers that do not depend on the recurrence (the action and embed
    columns of their kernels) and the prior's output layers run once over all
    steps as large matmuls; only the GRU and posterior layers are sequential.
    """
    batch, length = action.shape[0] or tf.shape(action)[0], action.shape[1]
    if state is None:
      state = self.initial(batch)
    keep = 1.0 - tf.cast(is_first, tf.float32)                     # [B, T]
    action = cast(action) * cast(keep)[..., None]
    stoch_in = cast(self.img_in.kernel[:self.stoch_size])
    deter_out = cast(self.obs_out.kernel[:self._deter])
    # As [B * T, ...] matmuls: on [B, T, ...] TF takes the kernel's gradient
    # with a batched matmul per sequence and a sum, several times slower.
    over_steps = lambda x, kernel, bias: tf.reshape(
        tf.matmul(tf.reshape(x, [-1, x.shape[-1]]), cast(kernel)) + cast(bias),
        [batch, length, kernel.shape[-1]])
    act_in = over_steps(action, self.img_in.kernel[self.stoch_size:],
                        self.img_in.bias)                            # [B, T, H]
    embed_out = over_steps(cast(embed), self.obs_out.kernel[self._deter:],
                           self.obs_out.bias)                        # [B, T, H]
    stoch, deter = cast(self._flat(state['stoch'])), state['deter']
    posts, deters = [], []
    # Unstacking once keeps the backward pass to one op (slicing per step
    # would add a full-size gradient tensor per step).
    keeps, act_ins, embed_outs = (
        tf.unstack(x, length, 1) for x in (keep, act_in, embed_out))
    for t in range(length):
      mask = keeps[t][:, None]
      stoch, deter = stoch * cast(mask), deter * mask
      x = self._hidden(
          tf.matmul(stoch, stoch_in) + act_ins[t], self.img_in_norm)
      deter = self.cell(x, deter)
      x = tf.matmul(cast(deter), deter_out) + embed_outs[t]
      stats = self._stats(self._hidden(x, self.obs_out_norm), self.obs_dist)
      post_stoch = self._sample(stats, sample)
      stoch = self._flat(post_stoch)
      posts.append({'stoch': post_stoch, **stats})
      deters.append(deter)
    post = {k: tf.stack([p[k] for p in posts], 1) for k in posts[0]}
    post['deter'] = tf.stack(deters, 1)                              # [B, T, D]
    prior = self._prior_stats(post['deter'], steps=length)
    return post, prior

  def imagine(self, action, state):
    """Roll the prior forward with given actions [B, T, A] from `state`."""
    states = []
    for t in range(action.shape[1]):
      state = self.img_step(state, action[:, t])
      states.append(state)
    return {k: tf.stack([s[k] for s in states], 1) for k in states[0]}

  def _flat(self, stoch):
    if not self._discrete:
      return stoch
    shape = tf.concat([tf.shape(stoch)[:-2], [self.stoch_size]], 0)
    return tf.reshape(stoch, shape)

  def kl_loss(self, post, prior, forward, balance, free, free_avg):
    """KL balancing: balance * KL(sg(post) || prior) trains the prior,
    (1 - balance) * KL(post || sg(prior)) regularises the posterior; free nats
    clip each term from below (on the batch mean when `free_avg`)."""
    sg = lambda state: {k: tf.stop_gradient(v) for k, v in state.items()}
    lhs, rhs = (prior, post) if forward else (post, prior)
    mix = balance if forward else (1 - balance)
    if balance == 0.5:
      value = self.get_dist(lhs).kl(self.get_dist(rhs))
      return tf.reduce_mean(tf.maximum(value, free)), value
    value = value_lhs = self.get_dist(lhs).kl(self.get_dist(sg(rhs)))
    value_rhs = self.get_dist(sg(lhs)).kl(self.get_dist(rhs))
    if free_avg:
      loss_lhs = _free_nats(tf.reduce_mean(value_lhs), free)
      loss_rhs = _free_nats(tf.reduce_mean(value_rhs), free)
    else:
      loss_lhs = tf.reduce_mean(tf.maximum(value_lhs, free))
      loss_rhs = tf.reduce_mean(tf.maximum(value_rhs, free))
    return mix * loss_lhs + (1 - mix) * loss_rhs, value


def _free_nats(mean, free):
  """max(mean, free) of a batch mean. Data parallel, each replica holds the
  mean of its part of the batch: whether the whole batch's mean is above
  `free` is decided on the mean over replicas, so that the averaged
  gradients are the whole batch's."""
  context = tf.distribute.get_replica_context()
  if context is None or context.num_replicas_in_sync == 1:
    return tf.maximum(mean, free)
  whole = context.all_reduce(
      tf.distribute.ReduceOp.MEAN, tf.stop_gradient(mean))
  above = tf.cast(whole > free, mean.dtype)
  return above * mean + (1 - above) * free


def _mask(structure, is_first):
  keep = 1.0 - tf.cast(is_first, tf.float32)
  def apply(x):
    k = tf.cast(keep, x.dtype)
    return x * tf.reshape(k, tf.concat(
        [tf.shape(k), tf.ones([x.shape.rank - 1], tf.int32)], 0))
  return tf.nest.map_structure(apply, structure)
