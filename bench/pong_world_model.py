"""Does the Atari world model learn Pong's dynamics? Prints ONE JSON line.

Fills a replay with random-policy Pong episodes (the Atari protocol: sticky
actions, action repeat 4, 64x64 grayscale), trains only the world model of the
`atari` config, and measures open-loop prediction on held-out episodes: 5
context frames, then 45 frames imagined from the actions alone, per-pixel MSE
(pixels in [0, 1]) against two floors: predicting the mean training frame, and
repeating the last context frame. Saves the open-loop strips (truth / model /
error rows) as PNG in scores/.

  python3 bench/pong_world_model.py                  # ~30 min on 2 CPU cores
  python3 bench/pong_world_model.py --updates 200 --batch 16
  python3 bench/pong_world_model.py --quick          # < 2 min, tiny model, CI
"""

import argparse
import json
import pathlib
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

QUICK = ['--rssm.deter', '32', '--rssm.hidden', '32', '--rssm.stoch', '4',
         '--rssm.discrete', '4', '--encoder.cnn_depth', '4', '--decoder.cnn_depth', '4',
         '--reward_head.units', '16', '--discount_head.units', '16']


def collect(env, episodes, rng):
  """Random-policy episodes as dicts of arrays [T+1, ...]."""
  import numpy as np
  n = env.act_space['action'].shape[0]
  result = []
  for _ in range(episodes):
    obs = env.reset()
    steps = [{**obs, 'action': np.zeros(n, np.float32)}]
    while not obs['is_last']:
      action = np.eye(n, dtype=np.float32)[rng.integers(n)]
      obs = env.step({'action': action})
      steps.append({**obs, 'action': action})
    result.append({k: np.stack([s[k] for s in steps]) for k in steps[0]
                   if not k.startswith('log_')})
  return result


def open_loop(wm, episodes, context, horizon, rng, chunks):
  """Open-loop predictions for `chunks` random windows of held-out episodes.
  Returns truth, model [N, context + horizon, 64, 64, 1] in [0, 1]."""
  import numpy as np
  import tensorflow as tf
  length = context + horizon
  windows = []
  for _ in range(chunks):
    episode = episodes[rng.integers(len(episodes))]
    start = rng.integers(0, len(episode['image']) - length)
    window = {k: v[start:start + length] for k, v in episode.items()}
    window['is_first'] = np.zeros(length, bool)
    window['is_first'][0] = True
    windows.append(window)
  data = {k: tf.constant(np.stack([w[k] for w in windows])) for k in windows[0]}
  data = wm.preprocess(data)
  embed = wm.encoder(data)
  states, _ = wm.rssm.observe(
      embed[:, :context], data['action'][:, :context], data['is_first'][:, :context],
      sample=False)
  decoder = wm.heads['decoder']
  recon = decoder(wm.rssm.get_feat(states))['image'].mode()
  init = {k: v[:, -1] for k, v in states.items()}
  prior = wm.rssm.imagine(data['action'][:, context:], init)
  openl = decoder(wm.rssm.get_feat(prior))['image'].mode()
  model = np.clip(np.concatenate([recon, openl], 1) + 0.5, 0, 1)
  truth = np.asarray(tf.cast(data['image'], tf.float32)) + 0.5
  return truth, model


def save_strips(path, truth, model, rows=3, every=3):
  """PNG: for each of `rows` windows, three rows (truth / model / error) of
  every `every`-th frame."""
  import numpy as np
  from PIL import Image
  blocks = []
  for i in range(min(rows, len(truth))):
    t, m = truth[i, ::every, ..., 0], model[i, ::every, ..., 0]
    e = (m - t + 1) / 2
    blocks.append(np.concatenate([np.concatenate(list(x), 1) for x in (t, m, e)], 0))
    blocks.append(np.ones((4, blocks[-1].shape[1])))
  image = (np.concatenate(blocks[:-1], 0) * 255).astype(np.uint8)
  Image.fromarray(image).resize((image.shape[1] * 2, image.shape[0] * 2), Image.NEAREST).save(path)


def main():
  parser = argparse.ArgumentParser(description='Pong world model benchmark (one JSON line).')
  parser.add_argument('--episodes', type=int, default=40, help='random training episodes')
  parser.add_argument('--heldout', type=int, default=4)
  parser.add_argument('--updates', type=int, default=600)
  parser.add_argument('--batch', type=int, default=16)
  parser.add_argument('--eval_every', type=int, default=200,
                      help='also measure the open-loop MSE every this many updates (0: only at the end)')
  parser.add_argument('--precision', type=int, default=16)
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--outdir', default=str(ROOT / 'scores'))
  parser.add_argument('--quick', action='store_true')
  parser.add_argument('--config', nargs=argparse.REMAINDER, default=[])
  args = parser.parse_args()
  if args.quick:
    args.episodes, args.heldout, args.updates, args.batch, args.eval_every = 2, 1, 3, 4, 2
  from common import config as configlib
  argv = ['--configs', 'defaults', 'atari', '--dataset.batch', str(args.batch),
          '--precision', str(args.precision)] + (QUICK if args.quick else []) + args.config
  config = configlib.parse(argv)
  import numpy as np
  import tensorflow as tf
  from common import envs
  from common import nets
  from common import replay as replaylib
  from dreamerv2 import agent as agentlib
  tf.random.set_seed(args.seed)
  rng = np.random.default_rng(args.seed)
  nets.set_precision(config.precision)

  start = time.time()
  env = envs.make('atari_pong', 'train', action_repeat=4, time_limit=27000, seed=args.seed)
  train_eps = collect(env, args.episodes, rng)
  heldout = collect(env, args.heldout, rng)
  env.close()
  collect_s = time.time() - start

  directory = tempfile.mkdtemp(prefix='pong_wm_')
  replay = replaylib.Replay(directory, minlen=config.dataset.length,
                            maxlen=config.dataset.length, prioritize_ends=True, seed=args.seed)
  for episode in train_eps:
    replay.add_episode(episode)
  dataset = iter(replay.dataset(config.dataset.batch, config.dataset.length))
  obs_space = {k: v for k, v in env.obs_space.items()}
  step = tf.Variable(0, dtype=tf.int64)
  wm = agentlib.WorldModel(config, obs_space, env.act_space['action'].shape[0], step)
  train = tf.function(lambda data: wm.train(data)[1])
  mean_frame = np.mean(np.concatenate([e['image'] for e in train_eps]), 0) / 255.0

  def evaluate():
    truth, model = open_loop(wm, heldout, 5, 45, np.random.default_rng(1), 16)
    future = truth[:, 5:]
    return truth, model, {
        'model': float(np.mean((model[:, 5:] - future) ** 2)),
        'mean_frame': float(np.mean((mean_frame[None, None] - future) ** 2)),
        'last_context_frame': float(np.mean((truth[:, 4:5] - future) ** 2)),
    }

  losses, curve = [], []
  start, eval_s = time.time(), 0.0
  for i in range(args.updates):
    metrics = {k: float(v) for k, v in train(next(dataset)).items()}
    losses.append(metrics)
    if i == 0:
      compile_s = time.time() - start
      start = time.time()
    if args.eval_every and (i + 1) % args.eval_every == 0 and i + 1 < args.updates:
      begin = time.time()
      curve.append([i + 1, round(evaluate()[2]['model'], 6)])
      eval_s += time.time() - begin
      print(f'update {i + 1}: open-loop MSE {curve[-1][1]:.6f}', file=sys.stderr, flush=True)
  train_s = time.time() - start - eval_s
  truth, model, error = evaluate()
  curve.append([args.updates, round(error['model'], 6)])
  first, last = losses[0], {k: float(np.mean([m[k] for m in losses[-10:]])) for k in losses[0]}
  out = pathlib.Path(args.outdir)
  out.mkdir(parents=True, exist_ok=True)
  png = out / ('pong-world-model-openl-quick.png' if args.quick else 'pong-world-model-openl.png')
  save_strips(png, truth, model)
  print(json.dumps({
      'updates': args.updates, 'batch': args.batch, 'length': config.dataset.length,
      'precision': args.precision, 'train_episodes': len(train_eps),
      'train_steps': int(sum(len(e['image']) - 1 for e in train_eps)),
      'heldout_episodes': len(heldout),
      'loss_start': {k: round(first[k], 3) for k in ('image_loss', 'reward_loss', 'kl_loss', 'model_loss')},
      'loss_end': {k: round(last[k], 3) for k in ('image_loss', 'reward_loss', 'kl_loss', 'model_loss')},
      'openl_mse': {k: round(v, 6) for k, v in error.items()},
      'openl_mse_curve': curve,
      'below_both_floors': error['model'] < min(error['mean_frame'], error['last_context_frame']),
      'collect_s': round(collect_s, 1), 'compile_s': round(compile_s, 1),
      'train_s': round(train_s, 1), 'png': str(png.relative_to(ROOT) if png.is_relative_to(ROOT) else png),
  }))


if __name__ == '__main__':
  main()
