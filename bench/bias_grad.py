"""The bias gradient under bfloat16 on this CPU. Prints ONE JSON line.

One incoming gradient of the image decoder's output shape [400, 64, 64, 1]
(values ~ Normal(0.01, 0.1)), its bias gradient taken four ways: the float32
sum (the truth), TensorFlow's `bias_add` gradient in bfloat16 (BiasAddGrad),
`reduce_sum` in bfloat16, and `kernels.add_bias`, which the layers use.

  python3 bench/bias_grad.py
"""

import json
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))


def main():
  import numpy as np
  import tensorflow as tf
  from common import kernels
  shape = [400, 64, 64, 1]
  dy = tf.constant(
      np.random.default_rng(0).normal(0.01, 0.1, shape), tf.float32)
  half = tf.cast(dy, tf.bfloat16)

  def bias_grad(add, bias):
    with tf.GradientTape() as tape:
      tape.watch(bias)
      y = add(tf.zeros(shape, tf.bfloat16), bias)
    return float(tape.gradient(y, bias, output_gradients=half)[0])

  print(json.dumps({
      'shape': shape,
      'float32_sum': round(float(tf.reduce_sum(dy)), 2),
      'bias_add_grad_bfloat16': bias_grad(
          tf.nn.bias_add, tf.zeros([1], tf.bfloat16)),
      'reduce_sum_bfloat16': float(tf.reduce_sum(half)),
      'kernels_add_bias_bfloat16': bias_grad(
          kernels.add_bias, tf.zeros([1], tf.float32)),
  }))


if __name__ == '__main__':
  main()
