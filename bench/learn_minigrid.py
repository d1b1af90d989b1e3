"""Does DreamerV2 learn on this CPU? MiniGrid-Empty-5x5 from pixels.

Trains through the public `dreamerv2.api` entry point with the `minigrid`
config block (the unchanged algorithm, a smaller model): the full grid
rendered as RGB and resized to 64x64, the 7 discrete actions, MiniGrid's own
reward and time limit. First measures the random policy's return over 100
episodes (the floor), then per seed trains for `--steps` env steps,
evaluating every `--eval_every` steps with the eval policy (`--eval_eps`
episodes). Prints ONE JSON line; writes the curves to
scores/minigrid-empty-5x5.json (published format) and a PNG drawn by
common/plot.py.

  python3 bench/learn_minigrid.py  # seeds 0 1 2, 20k steps each
  python3 bench/learn_minigrid.py --seeds 0 --steps 10000
  # seeds side by side
  python3 bench/learn_minigrid.py --jobs 3 --logdir /tmp/minigrid
  # < 2 min, checks the JSON is complete
  python3 bench/learn_minigrid.py --quick
"""

import argparse
import collections
from concurrent import futures
import json
import multiprocessing
import pathlib
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TASK = 'minigrid_empty_5x5'
QUICK = {'rssm.deter': 32, 'rssm.hidden': 32, 'rssm.stoch': 4,
         'rssm.discrete': 4, 'encoder.cnn_depth': 4, 'decoder.cnn_depth': 4,
         'dataset.batch': 4, 'dataset.length': 10, 'reward_head.units': 16,
         'discount_head.units': 16, 'actor.units': 16, 'critic.units': 16,
         'prefill': 100, 'pretrain': 1}


def make_env(name, seed):
  """A gymnasium env: MiniGrid's full RGB render resized to 64x64."""
  import gymnasium
  import minigrid  # Registers the MiniGrid-* ids.
  from minigrid.wrappers import ImgObsWrapper, RGBImgObsWrapper
  del minigrid
  env = ImgObsWrapper(RGBImgObsWrapper(gymnasium.make(name)))
  env = gymnasium.wrappers.ResizeObservation(env, (64, 64))
  env.reset(seed=seed)
  return env


def random_floor(name, episodes, seed):
  import numpy as np
  env = make_env(name, seed)
  rng = np.random.default_rng(seed)
  returns = []
  for _ in range(episodes):
    env.reset()
    total, done = 0.0, False
    while not done:
      _, reward, terminated, truncated, _ = env.step(
          int(rng.integers(env.action_space.n)))
      total += reward
      done = terminated or truncated
    returns.append(total)
  env.close()
  return float(np.mean(returns))


class EvalRecorder:
  """A logger output that keeps (step, eval_return, wall seconds)."""

  def __init__(self):
    self.start = time.time()
    self.records = []

  def __call__(self, step, summaries):
    for name, value in summaries:
      if name == 'eval_return':
        self.records.append((step, float(value), time.time() - self.start))


def train_seed(args, seed, logdir):
  if args.jobs > 1:
    import os
    import tensorflow as tf
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    tf.config.threading.set_intra_op_parallelism_threads(threads)
  from common import config as configlib
  from common import logger as loggerlib
  from dreamerv2 import api
  blocks = configlib.load_configs()
  config = api.defaults().update(blocks['minigrid']).update({
      'logdir': str(logdir), 'seed': seed, 'steps': args.steps,
      'eval_every': args.eval_every, 'eval_eps': args.eval_eps,
      'log_every': args.eval_every, **(QUICK if args.quick else {})})
  config = config.update(args.overrides)
  recorder = EvalRecorder()
  outputs = [loggerlib.TerminalOutput(config.steps),
             loggerlib.JSONLOutput(logdir), recorder]
  api.train(make_env(args.env, seed), config, outputs,
            eval_env=make_env(args.env, seed + 10000))
  by_step = collections.defaultdict(list)
  wall = {}
  for step, value, seconds in recorder.records:
    by_step[step].append(value)
    wall[step] = seconds
  xs = sorted(by_step)
  ys = [sum(by_step[x]) / len(by_step[x]) for x in xs]
  solved = [x for x, y in zip(xs, ys) if y >= args.target]
  return {
      'seed': seed, 'xs': xs, 'ys': [round(y, 4) for y in ys],
      'episodes_per_eval': [len(by_step[x]) for x in xs],
      'first_step_at_target': solved[0] if solved else None,
      'wall_s_at_target': round(wall[solved[0]], 1) if solved else None,
      'final_eval_return': round(ys[-1], 4) if ys else None,
      'wall_s': round(time.time() - recorder.start, 1),
  }


def main():
  parser = argparse.ArgumentParser(
      description='MiniGrid learning benchmark (one JSON line).')
  parser.add_argument('--env', default='MiniGrid-Empty-5x5-v0')
  parser.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
  parser.add_argument('--steps', type=int, default=20000)
  parser.add_argument('--eval_every', type=int, default=1000)
  parser.add_argument('--eval_eps', type=int, default=20)
  parser.add_argument('--target', type=float, default=0.9)
  parser.add_argument('--floor_episodes', type=int, default=100)
  parser.add_argument(
      '--out', default=str(ROOT / 'scores' / 'minigrid-empty-5x5.json'))
  parser.add_argument('--jobs', type=int, default=1,
                      help='seeds trained at once, each in its own process '
                           '(wall times then share the CPU)')
  parser.add_argument('--logdir', default=None,
                      help='keep each seed\'s logdir here '
                           '(default: a temp dir)')
  parser.add_argument('--quick', action='store_true')
  parser.add_argument('--config', nargs='*', default=[], help='key value pairs')
  args = parser.parse_args()
  if args.jobs < 1:
    parser.error(f'--jobs must be at least 1, got {args.jobs}')
  args.overrides = dict(zip(args.config[::2], args.config[1::2]))
  if args.quick:
    args.seeds, args.steps, args.eval_every, args.eval_eps = [0], 300, 150, 2
    args.floor_episodes = 5
    args.out = str(pathlib.Path(tempfile.mkdtemp()) / 'minigrid-quick.json')
  if args.logdir:
    # train.py resumes from a logdir it finds; a benchmark must start fresh.
    used = [str(pathlib.Path(args.logdir) / str(seed)) for seed in args.seeds
            if any((pathlib.Path(args.logdir) / str(seed)).glob('*'))]
    if used:
      parser.error(
          f'--logdir {args.logdir} already holds runs ({", ".join(used)}): '
          'training would resume them instead of starting from step 0. '
          'Pass an empty or new --logdir, or remove those directories.')
  floor = random_floor(args.env, args.floor_episodes, 0)
  with tempfile.TemporaryDirectory() as tmp:
    root = pathlib.Path(args.logdir or tmp)
    logdirs = [root / str(seed) for seed in args.seeds]
    if args.jobs == 1:
      runs = [train_seed(args, seed, logdir)
              for seed, logdir in zip(args.seeds, logdirs)]
    else:
      context = multiprocessing.get_context('spawn')
      with futures.ProcessPoolExecutor(args.jobs, mp_context=context) as pool:
        runs = list(pool.map(
            train_seed, [args] * len(logdirs), args.seeds, logdirs))
  scores = [{'task': TASK, 'method': 'dreamerv2', 'seed': str(r['seed']),
             'xs': [float(x) for x in r['xs']], 'ys': r['ys']} for r in runs]
  out = pathlib.Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  from common import utils
  utils.atomic_write(out, lambda f: json.dump(scores, f), mode='w')
  png = None
  plot = subprocess.run(
      [sys.executable, str(ROOT / 'common' / 'plot.py'), '--baselines',
       str(out), '--outdir', str(out.parent), '--name', out.stem, '--bins', '0',
       '--agg', 'none', '--ylim', '0', '1'], capture_output=True, text=True)
  if plot.returncode == 0:
    png = str(out.with_suffix('.png'))
  solved = sum(r['first_step_at_target'] is not None for r in runs)
  print(json.dumps({
      'env': args.env, 'steps': args.steps, 'eval_every': args.eval_every,
      'eval_eps': args.eval_eps, 'target': args.target, 'jobs': args.jobs,
      'config': args.overrides,
      'random_floor': round(floor, 4), 'seeds_at_target': solved,
      'runs': runs, 'scores': str(out), 'png': png,
      'plot_error': None if plot.returncode == 0 else plot.stderr[-300:],
  }))


if __name__ == '__main__':
  main()
