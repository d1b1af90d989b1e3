"""How long common/plot.py takes on a large tree of runs.

  python3 bench/plot_speed.py                # 20 tasks x 5 methods x 10 seeds
  python3 bench/plot_speed.py --lines 1000

Writes <task>/<method>/<seed>/metrics.jsonl files shaped like the training
script's (a line per log_every = 4e5 frames, about 20 scalars per line, the
eval return in every line) into a temporary directory, runs plot.py on them
once with --bins 1e6 and prints one JSON line of figures. A benchmark, not a
test: nothing passes or fails.
"""

import argparse
import json
import pathlib
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
METRICS = (
    'train_return', 'train_length', 'eval_return', 'eval_length', 'fps',
    'model_loss', 'kl_loss', 'image_loss', 'reward_loss', 'discount_loss',
    'model_kl', 'prior_ent', 'post_ent', 'actor_loss', 'actor_ent',
    'critic_loss', 'critic', 'reward_mean', 'reward_std')


def write_tree(root, tasks, methods, seeds, lines):
  rng = np.random.default_rng(0)
  steps = 4e5 * np.arange(1, lines + 1)
  for task in range(tasks):
    for method in range(methods):
      for seed in range(seeds):
        logdir = root / f'atari_task{task:02d}' / f'method{method}' / str(seed)
        logdir.mkdir(parents=True)
        values = rng.normal(size=(lines, len(METRICS)))
        values[:, METRICS.index('eval_return')] += steps / 1e6
        with (logdir / 'metrics.jsonl').open('w') as f:
          for step, row in zip(steps, values):
            line = {'step': int(step), **dict(zip(METRICS, row.tolist()))}
            f.write(json.dumps(line) + '\n')


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--tasks', type=int, default=20)
  parser.add_argument('--methods', type=int, default=5)
  parser.add_argument('--seeds', type=int, default=10)
  parser.add_argument('--lines', type=int, default=200)
  args = parser.parse_args()
  with tempfile.TemporaryDirectory() as tmp:
    tmp = pathlib.Path(tmp)
    start = time.time()
    write_tree(tmp / 'logdir', args.tasks, args.methods, args.seeds, args.lines)
    generate_seconds = time.time() - start
    megabytes = sum(f.stat().st_size for f in tmp.rglob('metrics.jsonl')) / 1e6
    command = [sys.executable, str(ROOT / 'common' / 'plot.py'),
               '--indir', str(tmp / 'logdir'), '--outdir', str(tmp / 'plots'),
               '--bins', '1e6']
    start = time.time()
    result = subprocess.run(command, capture_output=True, text=True)
    plot_seconds = time.time() - start
    if result.returncode:
      sys.exit(f'plot.py failed: {result.stderr.strip()}')
    outputs = {f.name: f.stat().st_size
               for f in sorted((tmp / 'plots').iterdir())}
  print(json.dumps({
      'runs': args.tasks * args.methods * args.seeds,
      'lines_per_run': args.lines,
      'tasks': args.tasks, 'methods': args.methods, 'seeds': args.seeds,
      'metrics_mb': round(megabytes, 1),
      'generate_seconds': round(generate_seconds, 2),
      'plot_seconds': round(plot_seconds, 2),
      'plot_peak_rss_mb': round(
          resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1),
      'output_bytes': outputs,
  }))


if __name__ == '__main__':
  main()
