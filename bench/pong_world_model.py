"""Does the Atari world model learn Pong's dynamics? Prints ONE JSON line.

Fills a replay with random-policy Pong episodes (the Atari protocol: sticky
actions, action repeat 4, 64x64 grayscale), trains only the world model of the
`atari` config, and measures open-loop prediction on held-out episodes: 5
context frames, then 45 frames imagined from the actions alone, per-pixel MSE
(pixels in [0, 1]) of the model's expected frame (the mean of `--samples`
sampled rollouts; one rollout's MSE is reported beside it) against two
floors: predicting the mean training frame, and repeating the last context
frame. Saves the open-loop strips (truth / one rollout / mean of the rollouts
/ error rows) as PNG in scores/.

  python3 bench/pong_world_model.py                  # ~30 min on 2 CPU cores
  python3 bench/pong_world_model.py --updates 200 --batch 16
  python3 bench/pong_world_model.py --quick          # < 2 min, tiny model, CI

Ctrl-C, `kill -INT` (also for a run started in the background) or `kill`
ends training after the update that runs and still reports the updates done
(`"interrupted": true`, `updates` = the number done); a second Ctrl-C quits
at once.

Long runs: `--checkpoint DIR` keeps the episodes, the world model with its
optimizer state, and the losses and curve so far in DIR, saved at every curve
row and at the end. Running the same command again resumes there and trains
on up to `--updates` in total; the report covers the whole run and lists its
`segments`. The settings that shape the run (episodes, batch, precision,
seed, config, ...) must match the ones DIR was made with.

  python3 bench/pong_world_model.py --updates 15000 --eval_every 250 \\
      --checkpoint ~/pong
"""

import argparse
import atexit
import json
import pathlib
import shutil
import sys
import tempfile
import threading
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

QUICK = ['--rssm.deter', '32', '--rssm.hidden', '32', '--rssm.stoch', '4',
         '--rssm.discrete', '4', '--encoder.cnn_depth', '4',
         '--decoder.cnn_depth', '4', '--reward_head.units', '16',
         '--discount_head.units', '16']


# The per-update metrics kept (and saved) for the report.
LOSS_KEYS = ('image_loss', 'reward_loss', 'kl_loss', 'model_loss', 'post_ent',
             'prior_ent', 'model_grad_norm')
# The arguments that shape a run: a checkpoint resumes only with the same ones.
RUN_KEYS = ('episodes', 'heldout', 'batch', 'precision', 'seed', 'quick',
            'config')


def write_json(path, value):
  """Writes JSON atomically (common.utils.atomic_write)."""
  from common import utils
  utils.atomic_write(path, lambda f: json.dump(value, f), mode='w')


def check_run(path, args):
  """Fails with a clear error when `args` differ from the run at `path`."""
  saved = json.loads(pathlib.Path(path).read_text())
  differ = [f'--{k} {saved.get(k)!r} there, {getattr(args, k)!r} here'
            for k in RUN_KEYS if saved.get(k) != getattr(args, k)]
  if differ:
    sys.exit(f'--checkpoint {path.parent} was made with other settings ('
             + '; '.join(differ)
             + '): repeat them to resume, or choose a new directory.')


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


def open_loop(wm, episodes, context, horizon, rng, chunks, samples):
  """Open-loop predictions for `chunks` random windows of held-out episodes:
  the posterior (its mode) over `context` frames, then `samples` sampled prior
  rollouts from the actions alone. Returns truth, one sampled rollout, and the
  mean of the decoded rollouts (the model's expected frame, the point
  prediction MSE scores), each [N, context + horizon, 64, 64, 1] in [0, 1]."""
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
      embed[:, :context], data['action'][:, :context],
      data['is_first'][:, :context], sample=False)
  decoder = wm.heads['decoder']
  decode = lambda states: np.asarray(
      decoder(wm.rssm.get_feat(states))['image'].mode(), np.float32)
  recon = decode(states)
  init = {k: v[:, -1] for k, v in states.items()}
  rollouts = [decode(wm.rssm.imagine(data['action'][:, context:], init))
              for _ in range(samples)]
  frames = lambda openl: np.clip(np.concatenate([recon, openl], 1) + 0.5, 0, 1)
  truth = np.asarray(tf.cast(data['image'], tf.float32)) + 0.5
  return truth, frames(rollouts[0]), frames(np.mean(rollouts, 0))


def save_strips(path, truth, sample, mean, rows=3, every=3):
  """PNG: for each of `rows` windows, four rows (truth / one sampled rollout /
  mean of the rollouts / error of the mean, grey = 0) of every `every`-th
  frame."""
  import numpy as np
  from PIL import Image
  blocks = []
  for i in range(min(rows, len(truth))):
    t, s, m = (x[i, ::every, ..., 0] for x in (truth, sample, mean))
    e = (m - t + 1) / 2
    blocks.append(np.concatenate(
        [np.concatenate(list(x), 1) for x in (t, s, m, e)], 0))
    blocks.append(np.ones((4, blocks[-1].shape[1])))
  image = (np.concatenate(blocks[:-1], 0) * 255).astype(np.uint8)
  Image.fromarray(image).resize(
      (image.shape[1] * 2, image.shape[0] * 2), Image.NEAREST).save(path)


def main():
  parser = argparse.ArgumentParser(
      description='Pong world model benchmark (one JSON line).')
  parser.add_argument('--episodes', type=int, default=40,
                      help='random training episodes')
  parser.add_argument('--heldout', type=int, default=4)
  parser.add_argument('--updates', type=int, default=None,
                      help='world-model updates (default 600; 3 with --quick)')
  parser.add_argument('--batch', type=int, default=16)
  parser.add_argument('--samples', type=int, default=8,
                      help='sampled open-loop rollouts per window; MSE scores '
                           'their mean')
  parser.add_argument('--eval_every', type=int, default=100,
                      help='also measure the open-loop MSE every this many '
                           'updates (0: only at the end)')
  parser.add_argument('--precision', type=int, default=16)
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--outdir', default=str(ROOT / 'scores'))
  parser.add_argument('--quick', action='store_true')
  parser.add_argument('--checkpoint', default=None,
                      help='directory that keeps the run; the same command '
                           'resumes it')
  parser.add_argument('--config', nargs=argparse.REMAINDER, default=[])
  args = parser.parse_args()
  if args.quick:
    args.episodes, args.heldout, args.batch = 2, 1, 4
    args.eval_every, args.samples = 2, 2
  if args.updates is None:
    args.updates = 3 if args.quick else 600
  for name in ('updates', 'samples', 'episodes', 'heldout'):
    if getattr(args, name) < 1:
      parser.error(f'--{name} must be at least 1, got {getattr(args, name)}')
  ckpt = pathlib.Path(args.checkpoint).expanduser() if args.checkpoint else None
  resume = bool(ckpt) and (ckpt / 'run.json').exists()
  if resume:  # Before any work: the settings must be those of the run.
    check_run(ckpt / 'run.json', args)
  from common import config as configlib
  argv = (['--configs', 'defaults', 'atari', '--dataset.batch', str(args.batch),
           '--precision', str(args.precision)]
          + (QUICK if args.quick else []) + args.config)
  config = configlib.parse(argv)
  import numpy as np
  import tensorflow as tf
  from common import envs
  from common import nets
  from common import replay as replaylib
  from common import tfutils
  from common import utils
  from dreamerv2 import agent as agentlib
  tf.random.set_seed(args.seed)
  rng = np.random.default_rng(args.seed)
  nets.set_precision(config.precision)

  start = time.time()
  env = envs.make('atari_pong', 'train', action_repeat=4, time_limit=27000,
                  seed=args.seed)
  obs_space = {k: v for k, v in env.obs_space.items()}
  if resume:
    train_eps = list(replaylib.load_episodes(ckpt / 'train').values())
    heldout = list(replaylib.load_episodes(ckpt / 'heldout').values())
  else:
    train_eps = collect(env, args.episodes, rng)
    heldout = collect(env, args.heldout, rng)
  env.close()
  collect_s = time.time() - start

  if ckpt and not resume:
    # Episodes of a run killed before run.json was written are not kept.
    for name in ('train', 'heldout'):
      shutil.rmtree(ckpt / name, ignore_errors=True)
    (ckpt / 'heldout').mkdir(parents=True)
    for episode in heldout:
      replaylib.save_episode(ckpt / 'heldout', episode)
  step = tf.Variable(0, dtype=tf.int64)
  wm = agentlib.WorldModel(
      config, obs_space, env.act_space['action'].shape[0], step)
  losses, curve, segments = [], [], []
  if resume and (ckpt / 'world_model.pkl').exists():
    tfutils.load_checkpoint(wm, ckpt / 'world_model.pkl')
    progress = json.loads((ckpt / 'progress.json').read_text())
    # progress.json is written before the weights, so it may run ahead of them.
    done = int(wm.model_opt.updates.numpy())  # Skipped steps count too.
    losses = progress['losses'][:done]
    curve = [row for row in progress['curve'] if row['updates'] <= done]
    segments = [{**s, 'end': min(s['end'], done)} for s in progress['segments']
                if s['start'] < done]
    tf.random.set_seed(args.seed + done)
    print(f'Resuming {ckpt} after {done} updates.', file=sys.stderr, flush=True)
  if ckpt:
    directory = ckpt / 'train'
  else:  # The episodes' files go when the script ends.
    directory = tempfile.mkdtemp(prefix='pong_wm_')
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
  # A resumed run samples a fresh stream of batches, not the ones already seen.
  replay = replaylib.Replay(
      directory,
      minlen=config.dataset.length, maxlen=config.dataset.length,
      prioritize_ends=True,
      seed=[args.seed, len(losses)] if losses else args.seed)
  if not resume:
    for episode in train_eps:
      replay.add_episode(episode)
  if ckpt and not resume:
    write_json(ckpt / 'run.json', {k: getattr(args, k) for k in RUN_KEYS})
  dataset = iter(replay.dataset(config.dataset.batch, config.dataset.length))
  train = tf.function(lambda data: wm.train(data)[1])
  mean_frame = np.mean(
      np.concatenate([e['image'] for e in train_eps]), 0) / 255.0

  def evaluate(episodes=heldout):
    truth, sample, mean = open_loop(
        wm, episodes, 5, 45, np.random.default_rng(1), 16, args.samples)
    future, context = truth[:, 5:], truth[:, :5]
    mse = lambda prediction, target: float(np.mean((prediction - target) ** 2))
    return (truth, sample, mean), {
        'model': mse(mean[:, 5:], future),
        'model_one_sample': mse(sample[:, 5:], future),
        'mean_frame': mse(mean_frame[None, None], future),
        'last_context_frame': mse(truth[:, 4:5], future),
        # The 5 context frames through the posterior: does the latent carry
        # the frame?
        'recon': mse(mean[:, :5], context),
        'recon_mean_frame': mse(mean_frame[None, None], context),
    }

  def eps_bound():
    """Per module, the share of weights whose Adam step is damped at least
    2x by epsilon: sqrt(v) < eps, v the optimizer's running mean of g^2."""
    opt = wm.model_opt
    v_of = {p.ref(): v for p, v in zip(opt.params, opt.v)}
    modules = {'encoder': wm.encoder, 'rssm': wm.rssm, **wm.heads}
    return {
        f'eps_bound_{name}': round(float(np.mean(np.concatenate([
            np.sqrt(v_of[p.ref()].numpy().ravel()) < config.model_opt.eps
            for p in module.trainable_variables]))), 3)
        for name, module in modules.items()}

  def record(updates):
    """Appends one row to `curve` (replacing one at the same update, as a
    resumed finished run has); returns the held-out frames and errors."""
    frames, error = evaluate()
    recent = losses[-50:]
    if curve and curve[-1]['updates'] == updates:
      curve.pop()
    curve.append({
        'updates': updates, **{k: round(v, 6) for k, v in error.items()},
        'model_train_episodes': round(
            evaluate(train_eps[:args.heldout])[1]['model'], 6),
        # Entropies (nats) of the 32x32 categorical latent: a posterior near the
        # uniform 32*ln(32) = 110.9 nats, input-independent, carries no frame.
        **{k: round(float(np.mean([m[k] for m in recent])), 3)
           for k in ('image_loss', 'kl_loss', 'post_ent', 'prior_ent')},
        # The largest gradient norm (before clipping) of those 50 updates.
        'grad_norm_max': round(max(m['model_grad_norm'] for m in recent), 1),
        **eps_bound()})
    print(json.dumps(curve[-1]), file=sys.stderr, flush=True)
    return frames, error

  segment = {'start': len(losses), 'end': len(losses), 'train_s': 0.0,
             'eval_s': 0.0, 'compile_s': 0.0, 'collect_s': round(collect_s, 1)}

  def save():
    """Keeps the run in --checkpoint: progress first, then the weights, each
    written atomically (a kill between them leaves progress ahead, trimmed
    on resume)."""
    if ckpt:
      write_json(ckpt / 'progress.json', {
          'losses': losses, 'curve': curve, 'segments': segments + [segment]})
      tfutils.save_checkpoint(wm, ckpt / 'world_model.pkl')

  start = time.time()
  # Ctrl-C or SIGTERM stops after the update that runs. Shells start
  # background jobs (`cmd &`) with SIGINT ignored; the handler lets
  # `kill -INT` stop those runs early too.
  stop = threading.Event()
  utils.install_stop_handler(
      stop, 'Stopping after this update, then reporting (Ctrl-C again quits '
      'at once).', sys.stderr)
  for i in range(len(losses), args.updates):
    if stop.is_set():
      break
    metrics = train(next(dataset))
    losses.append({k: float(metrics[k]) for k in LOSS_KEYS})
    if i == segment['start']:
      segment['compile_s'] = round(time.time() - start, 1)
      start = time.time()
    segment['end'] = len(losses)
    if (args.eval_every and (i + 1) % args.eval_every == 0
        and i + 1 < args.updates):
      begin = time.time()
      record(i + 1)
      segment['eval_s'] += time.time() - begin
      segment['train_s'] = time.time() - start - segment['eval_s']
      save()
  interrupted = stop.is_set()
  if interrupted:
    print(f'Interrupted after {len(losses)} updates: reporting them.',
          file=sys.stderr, flush=True)
    if not losses:
      sys.exit('Interrupted before the first update: nothing to report.')
  segment['train_s'] = round(time.time() - start - segment['eval_s'], 1)
  segment['eval_s'] = round(segment['eval_s'], 1)
  done = len(losses)
  frames, error = record(done)
  save()
  if segment['end'] > segment['start']:
    segments.append(segment)
  first = losses[0]
  last = {k: float(np.mean([m[k] for m in losses[-10:]])) for k in first}
  out = pathlib.Path(args.outdir)
  out.mkdir(parents=True, exist_ok=True)
  png = out / ('pong-world-model-openl-quick.png' if args.quick
               else 'pong-world-model-openl.png')
  save_strips(png, *frames)
  print(json.dumps({
      'updates': done, 'interrupted': interrupted, 'samples': args.samples,
      'batch': args.batch, 'length': config.dataset.length,
      'precision': args.precision, 'train_episodes': len(train_eps),
      'train_steps': int(sum(len(e['image']) - 1 for e in train_eps)),
      'heldout_episodes': len(heldout),
      'loss_start': {k: round(first[k], 3) for k in (
          'image_loss', 'reward_loss', 'kl_loss', 'model_loss')},
      'loss_end': {k: round(last[k], 3) for k in (
          'image_loss', 'reward_loss', 'kl_loss', 'model_loss')},
      'openl_mse': {k: round(v, 6) for k, v in error.items()},
      'openl_mse_curve': curve,
      'below_both_floors': error['model'] < min(
          error['mean_frame'], error['last_context_frame']),
      'collect_s': round(collect_s, 1), 'compile_s': segments[0]['compile_s'],
      'train_s': round(sum(s['train_s'] for s in segments), 1),
      'segments': segments, 'checkpoint': str(ckpt) if ckpt else None,
      'png': str(png.relative_to(ROOT) if png.is_relative_to(ROOT) else png),
  }))


if __name__ == '__main__':
  main()
