"""The work in one DreamerV2 update, counted from the config's layer sizes.

  python3 bench/flops.py          # Atari config, batch 16x50
  python3 bench/flops.py --config --dataset.batch 50
  python3 bench/flops.py --check  # and TensorFlow's own count

Counts the multiply-adds of every matmul and convolution (2 FLOPs each) in
the forward pass of the world model over B x T frames and of the
imagination from B x T starts, and the backward passes the update runs:
input and weight gradients (2x the forward) for the world model; for the
actor-critic, weight gradients of the actor and critic (the actor's input is
a stop-gradient) and, for `dynamics`, the gradient through the rollout.
Elementwise ops (activations, norms, softmax) are left out: they are a few
percent and run at memory speed, not at the matmul peak. `--check` also
asks TensorFlow's profiler for the FLOPs of the traced graphs, the world
model's update alone and the whole update. Its count is of the graph as
traced, before TensorFlow prunes the gradients nothing uses (e.g. of the
actor's stop-gradient input and of the heads the reinforce objective does
not differentiate), so it is higher for the actor-critic.
"""

import argparse
import json
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def mlp(inp, units, layers, out):
  """Multiply-adds of a `layers` x `units` dense stack and its output layer."""
  sizes = [inp] + [units] * layers + [out]
  return sum(a * b for a, b in zip(sizes[:-1], sizes[1:]))


def encoder(height, channels, depth, kernels):
  macs, size, cin = 0, height, channels
  for i, k in enumerate(kernels):
    cout = depth * 2 ** i
    size = (size - k) // 2 + 1
    macs += size * size * k * k * cin * cout
    cin = cout
  return macs, size * size * cin  # And the embedding size.


def decoder(feat, channels, depth, kernels):
  macs, size, cin = feat * 32 * depth, 1, 32 * depth
  for i, k in enumerate(kernels):
    last = i == len(kernels) - 1
    cout = channels if last else depth * 2 ** (len(kernels) - i - 2)
    macs += size * size * k * k * cin * cout  # Each input pixel's k x k patch.
    size = (size - 1) * 2 + k
    cin = cout
  return macs


def update_flops(config, image=(64, 64, 1), actions=18):
  """{'world_model', 'imagination', 'total'} FLOPs of one update, and the
  share of the world model's that are convolutions ('conv')."""
  B, T = config.dataset.batch, config.dataset.length
  rssm = config.rssm
  stoch = rssm.stoch * (rssm.discrete or 1)
  stats = stoch if rssm.discrete else 2 * stoch
  feat = stoch + rssm.deter
  H, D = rssm.hidden, rssm.deter
  enc, embed = encoder(image[0], image[2], config.encoder.cnn_depth,
                       config.encoder.cnn_kernels)
  dec = decoder(feat, image[2], config.decoder.cnn_depth,
                config.decoder.cnn_kernels)
  prior = D * H + H * stats                        # img_out, img_dist
  step = (stoch + actions) * H + (H + D) * 3 * D   # img_in, GRU
  posterior = (D + embed) * H + H * stats          # obs_out, obs_dist
  head = lambda c: mlp(feat, c.units, c.layers, 1)
  heads = head(config.reward_head) + (
      head(config.discount_head) if config.pred_discount else 0)
  frame = enc + dec + step + prior + posterior + heads
  world_model = 2 * 3 * frame * B * T              # Forward, then 2x backward.
  conv = 2 * 3 * (enc + dec - feat * 32 * config.decoder.cnn_depth) * B * T

  horizon = config.imag_horizon
  actor = mlp(feat, config.actor.units, config.actor.layers, actions)
  critic = mlp(feat, config.critic.units, config.critic.layers, 1)
  rollout = horizon * (actor + step + prior)       # States s1..sH.
  states = horizon + 1
  forward = (rollout + states * heads + states * critic   # Heads, slow critic.
             + horizon * critic)                   # Critic on s0..s(H-1).
  backward = 2 * horizon * critic + 2 * (horizon - 1) * actor
  grad = config.actor_grad
  if grad == 'auto':
    grad = 'reinforce'  # The Atari (discrete) config's.
  if grad in ('dynamics', 'both'):
    backward += 2 * (rollout + states * heads + states * critic)
  imagination = 2 * (forward + backward) * B * T
  total = world_model + imagination
  return {'world_model': world_model, 'imagination': imagination,
          'total': total, 'conv': conv}


def tensorflow_flops(function, *args):
  """FLOPs of a traced graph by TensorFlow's profiler (the ops with
  registered FLOP statistics: matmuls, convolutions and their gradients,
  and elementwise ops), before graph optimisation prunes unused gradients."""
  import tensorflow as tf
  concrete = function.get_concrete_function(*args)
  options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
  options['output'] = 'none'
  profile = tf.compat.v1.profiler.profile(concrete.graph, options=options)
  return int(profile.total_float_ops)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--check', action='store_true',
                      help='also count with TensorFlow\'s profiler '
                           '(builds the agent)')
  parser.add_argument('--config', nargs=argparse.REMAINDER, default=[])
  args = parser.parse_args()
  from common import config as configlib
  argv = (['--configs', 'defaults', 'atari', '--dataset.batch', '16']
          + args.config)
  config = configlib.parse(argv)
  counted = update_flops(config)
  result = {'config': ' '.join(argv), **{f'{k}_gflop': round(v / 1e9, 1)
                                         for k, v in counted.items()}}
  if args.check:
    from bench import speed
    import tensorflow as tf
    agent, data = speed.build_agent(argv + ['--jit', 'True'])
    world_model = tensorflow_flops(
        tf.function(lambda d: agent.wm.train(d)[1]), data)
    theirs = tensorflow_flops(agent._train, data)
    result['tensorflow_world_model_gflop'] = round(world_model / 1e9, 1)
    result['tensorflow_gflop'] = round(theirs / 1e9, 1)
    result['world_model_counted_over_tensorflow'] = round(
        counted['world_model'] / world_model, 3)
    result['counted_over_tensorflow'] = round(counted['total'] / theirs, 3)
  print(json.dumps(result))


if __name__ == '__main__':
  main()
