"""Learning against a published curve: DMC from pixels, the dmc_vision config.

Each seed trains with the command line users run, in a child process:

  python3 dreamerv2/train.py --configs defaults dmc_vision --task TASK \\
      --seed S --logdir DIR/TASK/dreamerv2/S --steps FRAMES/2 --eval_every 5000

Only `steps` and `eval_every` differ from the unchanged dmc_vision block
(evaluation every 5000 agent steps = 10k frames, one episode each). The same
command resumes every seed where its logdir stopped (train.py resumes a
logdir), so a run may span sittings: each sitting is appended to
DIR/TASK/dreamerv2/S/sittings.jsonl and the wall times are summed over them.
Prints ONE JSON line: per seed the eval curve, updates, wall time and loop
speed; the published seeds' median, min and max at the same frames; the
random policy's return (measured, --floor_episodes episodes); the target
check and the verdict of `common/plot.py --compare` at --frames. Writes the
curves to scores/dmc-walker-walk.json (published format, method
`dreamerv2_tf2`) and a PNG drawn by common/plot.py beside the published seeds.

  python3 bench/learn_dmc.py --task dmc_walker_walk --frames 100000 \\
      --seeds 0 --logdir ~/runs/dmc
  python3 bench/learn_dmc.py --task dmc_walker_walk --frames 100000 \\
      --seeds 0 1 2 --logdir ~/runs/dmc
  # < 2 min: two sittings of a tiny model, JSON complete
  python3 bench/learn_dmc.py --quick

Ctrl-C (or SIGTERM) stops the children, which save their checkpoints.
"""

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import seeds  # noqa: E402 (no TensorFlow)
from common import plot as plot_lib  # noqa: E402
from common import utils  # noqa: E402

METHOD = seeds.METHOD
PUBLISHED = ROOT / 'scores' / 'dmc-vision-dreamerv2.json'
ACTION_REPEAT = 2  # The dmc_vision block's; frames = agent steps * 2.
# --quick only: a tiny model, a short prefill and 50-step episodes, so that
# two sittings fit in CI. The learning run never passes these.
QUICK_TIME_LIMIT = 50  # Agent steps; the random floor uses it too.
QUICK = [
    '--rssm.deter', '16', '--rssm.hidden', '16', '--rssm.stoch', '4',
    '--rssm.discrete', '4', '--encoder.cnn_depth', '2',
    '--decoder.cnn_depth', '2', '--reward_head.units', '16',
    '--actor.units', '16', '--critic.units', '16', '--dataset.batch', '2',
    '--dataset.length', '8', '--prefill', '100', '--pretrain', '1',
    '--train_every', '50', '--log_every', '250', '--imag_horizon', '3',
    '--precision', '32', '--time_limit', str(QUICK_TIME_LIMIT)]


def train_command(args, seed, steps):
  command = [
      sys.executable, str(ROOT / 'dreamerv2' / 'train.py'),
      '--configs', 'defaults', 'dmc_vision', '--task', args.task,
      '--seed', str(seed),
      '--logdir', str(seeds.seed_logdir(args.logdir, args.task, seed)),
      '--steps', str(steps), '--eval_every', str(args.eval_every)]
  if args.precision:
    command += ['--precision', str(args.precision)]
  return command + (QUICK if args.quick else [])


def run_seeds(args, seed_list, steps):
  """Trains the seeds to `steps` agent steps (bench/seeds.py); False when
  Ctrl-C stopped them."""
  logdirs = {seed: seeds.seed_logdir(args.logdir, args.task, seed)
             for seed in seed_list}
  return seeds.run(
      logdirs, lambda seed: train_command(args, seed, steps), steps,
      ACTION_REPEAT, args.jobs, name='learn_dmc.py',
      env={'MUJOCO_GL': os.environ.get('MUJOCO_GL', 'egl')})


def random_floor(args):
  """Mean return of uniform random actions, cached in
  DIR/TASK/random_floor.json."""
  path = (pathlib.Path(args.logdir).expanduser() / args.task
          / 'random_floor.json')
  time_limit = QUICK_TIME_LIMIT if args.quick else 0
  if path.exists():
    cached = json.loads(path.read_text())
    if (cached['episodes'], cached.get('time_limit', 0)) == (
        args.floor_episodes, time_limit):
      return cached
  os.environ.setdefault('MUJOCO_GL', 'egl')
  import numpy as np
  from common import envs
  env = envs.make(args.task, 'eval', action_repeat=ACTION_REPEAT, seed=12345,
                  time_limit=time_limit)
  rng = np.random.default_rng(0)
  size = env.act_space['action'].shape[0]
  returns = []
  for _ in range(args.floor_episodes):
    obs, total = env.reset(), 0.0
    while not obs['is_last']:
      obs = env.step({'action': rng.uniform(-1, 1, size).astype(np.float32)})
      total += float(obs['reward'])
    returns.append(total)
  env.close()
  result = {'episodes': args.floor_episodes, 'time_limit': time_limit,
            'mean': float(np.mean(returns)),
            'std': float(np.std(returns)),
            'returns': [round(r, 2) for r in returns]}
  path.parent.mkdir(parents=True, exist_ok=True)
  utils.atomic_write(path, lambda f: json.dump(result, f), mode='w')
  return result


def report(args, steps, floor):
  published = [c for c in plot_lib.load_scores(PUBLISHED)
               if c['task'] == args.task]
  frames = steps * ACTION_REPEAT
  runs, scores = [], []
  for seed in args.seeds:
    logdir = seeds.seed_logdir(args.logdir, args.task, seed)
    curve = seeds.eval_curve(logdir)
    xs = [float(x) for x, _ in curve]
    ys = [float(y) for _, y in curve]
    spent = seeds.sittings(logdir)
    wall = sum(s['end'] - s['start'] for s in spent)
    updates = seeds.updates_made(logdir)
    agent_steps = seeds.stored_steps(logdir)
    window = [y for x, y in curve if args.window[0] < x <= args.window[1]]
    runs.append({
        'seed': seed, 'frames': xs, 'eval_return': [round(y, 1) for y in ys],
        'agent_steps': agent_steps, 'updates': updates,
        'wall_s': round(wall, 1), 'sittings': len(spent),
        'commits': sorted({str(s.get('commit')) for s in spent}),
        'agent_steps_per_s': round(agent_steps / wall, 3) if wall else None,
        'updates_per_s': round(updates / wall, 4) if wall else None,
        'window_mean': round(sum(window) / len(window), 1) if window else None,
        'window_evals': len(window)})
    if xs:
      scores.append({'task': args.task, 'method': METHOD, 'seed': str(seed),
                     'xs': xs, 'ys': ys})
  grid = sorted({x for run in runs for x in run['frames']})
  band = {}
  for x in grid:
    values = plot_lib.published_values(published, x)
    if values:
      band[x] = plot_lib.summarize(values)
  at = plot_lib.published_values(published, args.window[1])
  target = {'window': list(args.window), 'error': (
      f'no published seed reaches {args.window[1]:g} frames (the first point '
      f'is at {min(c["xs"][0] for c in published):g})')}
  if at:
    median, low = plot_lib.summarize(at)['median'], min(at)
    means = [run['window_mean'] for run in runs]
    target = {
        'window': list(args.window), 'published_median': round(median, 1),
        'published_min': round(low, 1), 'threshold': round(0.8 * median, 1),
        'seeds_at_80_percent': sum(
            m is not None and m >= 0.8 * median for m in means),
        'seeds_below_published_min': sum(
            m is not None and m < low for m in means),
        'seeds_with_window': sum(m is not None for m in means)}
  verdict = None
  if scores:
    verdict = plot_lib.compare(scores, published, at=[args.window[1]])
    verdict['short'] = [reason for _, _, reason in verdict['short']]
  out = pathlib.Path(args.out)
  png = None
  plot_error = None
  if scores:
    out.parent.mkdir(parents=True, exist_ok=True)
    utils.atomic_write(out, lambda f: json.dump(scores, f), mode='w')
    command = [
        sys.executable, str(ROOT / 'common' / 'plot.py'), '--baselines',
        str(out), str(PUBLISHED), '--tasks', args.task, '--outdir',
        str(out.parent), '--name', out.stem, '--bins', '0', '--agg', 'per0',
        '--xlim', '0', str(max(frames, grid[-1] if grid else frames))]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode == 0:
      png = str(out.with_suffix('.png'))
    else:
      plot_error = result.stderr[-300:]
  return {
      'task': args.task, 'frames': frames, 'eval_every': args.eval_every,
      'configs': 'defaults dmc_vision', 'quick': args.quick,
      'precision': args.precision, 'jobs': args.jobs,
      'random_floor': round(floor['mean'], 1),
      'random_floor_std': round(floor['std'], 1),
      'random_floor_episodes': floor['episodes'],
      'runs': runs,
      'published': {str(int(x)): {k: round(v, 1) for k, v in s.items()}
                    for x, s in band.items()},
      'target': target, 'compare': verdict,
      'scores': str(out) if scores else None,
      'png': png, 'plot_error': plot_error}


def main():
  parser = argparse.ArgumentParser(
      description='DMC learning benchmark against the published curves '
                  '(one JSON line).')
  parser.add_argument('--task', default='dmc_walker_walk')
  parser.add_argument('--frames', type=int, default=100000)
  parser.add_argument('--seeds', type=int, nargs='+', default=[0])
  parser.add_argument('--logdir', default=None,
                      help=('seeds train in LOGDIR/TASK/%s/SEED '
                            '(default: a temp dir)') % METHOD)
  parser.add_argument('--eval_every', type=int, default=5000,
                      help='agent steps')
  parser.add_argument('--precision', type=int, choices=(16, 32),
                      help='the compute precision only (default: the '
                      "block's 16); 32 on a CPU without native bfloat16 "
                      '(no AVX512-BF16 or AMX), which emulates it slowly')
  parser.add_argument('--jobs', type=int, default=1,
                      help='seeds trained side by side')
  parser.add_argument('--window', type=float, nargs=2, default=None,
                      metavar=('LOW', 'HIGH'),
                      help='frames (LOW, HIGH] whose evaluations are averaged '
                           'per seed for the target (default: the last 30k '
                           'frames)')
  parser.add_argument('--floor_episodes', type=int, default=10)
  parser.add_argument('--out', default=None,
                      help='score file '
                           '(default: scores/<task without dmc_>.json)')
  parser.add_argument('--quick', action='store_true')
  args = parser.parse_args()
  if not args.task.startswith('dmc_'):
    parser.error(f'--task {args.task!r} is not a DMC task (dmc_...)')
  for name in ('frames', 'eval_every', 'jobs', 'floor_episodes'):
    if getattr(args, name) < 1:
      parser.error(f'--{name} must be at least 1, got {getattr(args, name)}')
  if args.quick:
    args.frames, args.eval_every, args.floor_episodes = 800, 200, 1
    args.seeds = [0]
  if args.window is None:
    args.window = (max(0.0, args.frames - 30000.0), float(args.frames))
  temp = None
  if args.logdir is None:
    temp = tempfile.TemporaryDirectory()
    args.logdir = temp.name
  if args.out is None:
    name = args.task.removeprefix('dmc_').replace('_', '-')
    args.out = (pathlib.Path(args.logdir) / f'dmc-{name}-quick.json'
                if args.quick else ROOT / 'scores' / f'dmc-{name}.json')
  steps = args.frames // ACTION_REPEAT
  floor = random_floor(args)
  if args.quick:
    # Two sittings: the second resumes what the first saved.
    complete = (run_seeds(args, args.seeds, steps // 2)
                and run_seeds(args, args.seeds, steps))
  else:
    complete = run_seeds(args, args.seeds, steps)
  result = report(args, steps, floor)
  result['complete'] = complete
  print(json.dumps(result))
  if temp:
    temp.cleanup()


if __name__ == '__main__':
  main()
