"""Faster forms of TensorFlow ops for the layers of common/nets.py, each
computing what the plain op computes (tests/test_nets.py and
tests/test_precision.py check each against it):

  add_bias          bias_add with a float32-accumulated bias gradient in
                    bfloat16
  conv2d            VALID conv; as a matmul over patches for <= 2x2 outputs
  conv2d_transpose  VALID transposed conv; as one matmul from a 1x1 input, or
                    by phases (one stride-1 conv and depth_to_space) for the
                    decoder's last layer

Where a form pays off depends on TensorFlow's CPU kernels; bench/README.md
has the measurements.
"""

import tensorflow as tf


@tf.custom_gradient
def _bias_add_sum_grad(x, bias):
  def grad(dy):
    return dy, tf.cast(tf.reduce_sum(dy, tf.range(tf.rank(dy) - 1)), bias.dtype)
  return tf.nn.bias_add(x, tf.cast(bias, x.dtype)), grad


def add_bias(x, bias):
  """x + bias over the last axis, with a bias gradient that is right in
  bfloat16.

  TensorFlow's CPU gradient of `bias_add` (BiasAddGrad) accumulates bfloat16
  in bfloat16, which stalls once the running sum is large: over one
  [400, 64, 64, 1] batch it returned 255 where the true sum was 16425, and
  every bias of the model trained on such sums. `reduce_sum` accumulates in
  float32, so in bfloat16 the bias gradient is taken with it.
  """
  if x.dtype == tf.bfloat16:
    return _bias_add_sum_grad(x, tf.convert_to_tensor(bias))
  return tf.nn.bias_add(x, tf.cast(bias, x.dtype))


def conv2d(x, kernel, stride):
  """tf.nn.conv2d(x, kernel, stride, 'VALID'); kernel [k, k, in, out]."""
  k, height, width = kernel.shape[0], x.shape[1], x.shape[2]
  rows, cols = (height - k) // stride + 1, (width - k) // stride + 1
  if rows > 2 or cols > 2:
    return tf.nn.conv2d(x, kernel, stride, 'VALID')
  # At most 2x2 outputs: a matmul over the input patches (TF's bfloat16
  # filter gradient is slow on such small maps).
  patches = tf.stack([x[:, i * stride:i * stride + k, j * stride:j * stride + k]
                      for i in range(rows) for j in range(cols)], 1)
  patches = tf.reshape(patches, [-1, k * k * x.shape[-1]])
  y = tf.matmul(patches, tf.reshape(kernel, [-1, kernel.shape[-1]]))
  return tf.reshape(y, [-1, rows, cols, kernel.shape[-1]])


def conv2d_transpose(x, kernel, stride):
  """The VALID transposed conv of x [B, H, W, in] with kernel
  [k, k, out, in], output [B, (H - 1) * stride + k, ...]."""
  k, out = kernel.shape[0], kernel.shape[2]
  height, width = x.shape[1], x.shape[2]
  if height == width == 1:
    # From a 1x1 input it is one matmul; TF's CPU kernel for this case is
    # several times slower than the matmul.
    inp = kernel.shape[-1]
    kernel = tf.reshape(tf.transpose(kernel, [3, 0, 1, 2]), [inp, -1])
    return tf.reshape(tf.matmul(tf.reshape(x, [-1, inp]), kernel),
                      [-1, k, k, out])
  if stride == 2 and k % 2 == 0 and out <= 4:
    # The decoder's last layer (1 or 3 channels), where TF's CPU kernel runs
    # far below its usual rate.
    return _transpose_by_phases(x, kernel)
  size = lambda n: (n - 1) * stride + k
  out_shape = [tf.shape(x)[0], size(height), size(width), out]
  return tf.nn.conv2d_transpose(x, kernel, out_shape, stride, 'VALID')


@tf.custom_gradient
def _transpose_by_phases(x, kernel):
  """conv2d_transpose(x, kernel, stride 2, VALID) for an even kernel size
  k = 2m, computed as one stride-1 convolution and depth_to_space.

  Output pixel (2i + a, 2j + b) sums x[i - p, j - q] * kernel[2p + a, 2q + b]
  over p, q < m: for each of the four phases (a, b) a stride-1 correlation
  of the padded input with the flipped m x m taps of that phase, so the
  phases become 4 * out channels of one convolution. The gradients are TF's
  own ops for the transposed convolution (a strided conv and its filter
  gradient), which are fast for this shape."""
  k, _, out, inp = kernel.shape
  m = k // 2
  taps = tf.reshape(kernel, [m, 2, m, 2, out, inp])         # [p, a, q, b, o, c]
  taps = tf.reverse(taps, [0, 2])
  taps = tf.reshape(
      tf.transpose(taps, [0, 2, 5, 1, 3, 4]), [m, m, inp, 4 * out])
  padded = tf.pad(x, [[0, 0], [m - 1, m - 1], [m - 1, m - 1], [0, 0]])
  y = tf.nn.depth_to_space(tf.nn.conv2d(padded, taps, 1, 'VALID'), 2)

  def grad(dy):
    dx = tf.nn.conv2d(dy, kernel, 2, 'VALID')
    dkernel = tf.raw_ops.Conv2DBackpropFilter(
        input=dy, filter_sizes=tf.shape(kernel), out_backprop=x,
        strides=[1, 2, 2, 1], padding='VALID')
    return dx, dkernel
  return y, grad
