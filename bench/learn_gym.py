"""Learning on a gymnasium id from the command line: the `vector` config block.

Each seed trains with the command users run, in a child process:

  python3 dreamerv2/train.py --configs defaults vector --task TASK \\
      --seed S --logdir DIR/TASK/dreamerv2_tf2/S --steps STEPS

The `vector` block is unchanged; only `steps` is given (and, with --quick,
a tiny model). A seed whose logdir holds a stopped run resumes it (train.py
resumes a logdir); its sittings are recorded in the logdir's sittings.jsonl
(bench/seeds.py). Ctrl-C (or SIGTERM) stops the seeds, which save their
checkpoints, and the report is printed, incomplete. Prints ONE JSON line: per
seed the eval curve (x in frames: agent steps times the block's
action_repeat), the mean eval return over the last 10% of the run's frames,
how each evaluation episode ended (eval_endings) and the wall time; the
random policy's mean return (--floor_episodes
episodes); how many seeds reach --target. Writes the curves to
scores/<task>.json (published format, method `dreamerv2_tf2`) and a PNG drawn
by common/plot.py.

  python3 bench/learn_gym.py --seeds 0 1 2 --jobs 2 --logdir ~/runs/gym
  python3 bench/learn_gym.py --quick  # < 2 min: a tiny model, JSON complete
"""

import argparse
import json
import pathlib
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import seeds  # noqa: E402 (no TensorFlow)
from common import config as configlib  # noqa: E402
from common import utils  # noqa: E402

METHOD = seeds.METHOD
CONFIGS = ['defaults', 'vector']
QUICK = [
    '--rssm.deter', '16', '--rssm.hidden', '16', '--rssm.stoch', '4',
    '--rssm.discrete', '4', '--encoder.mlp_layers', '16',
    '--decoder.mlp_layers', '16', '--reward_head.units', '16',
    '--discount_head.units', '16', '--actor.units', '16', '--critic.units',
    '16', '--dataset.batch', '2', '--dataset.length', '8', '--prefill', '100',
    '--train_every', '20', '--log_every', '200', '--eval_every', '200',
    '--eval_eps', '1', '--imag_horizon', '3', '--precision', '32']


def seed_logdir(args, seed):
  return seeds.seed_logdir(args.logdir, args.task, seed)


def train_command(args, seed):
  command = [
      sys.executable, str(ROOT / 'dreamerv2' / 'train.py'),
      '--configs', *CONFIGS, '--task', args.task, '--seed', str(seed),
      '--logdir', str(seed_logdir(args, seed)), '--steps', str(args.steps)]
  if args.precision:
    command += ['--precision', str(args.precision)]
  return command + (QUICK if args.quick else [])


def random_floor(task, action_repeat, episodes):
  """Mean and std of the return of uniformly random actions."""
  import numpy as np
  from common import envs
  env = envs.make(task, 'eval', action_repeat=action_repeat, seed=12345)
  space = env.act_space['action']
  space.seed(0)
  returns = []
  for _ in range(episodes):
    obs, total = env.reset(), 0.0
    while not obs['is_last']:
      obs = env.step({'action': space.sample()})
      total += float(obs['reward'])
    returns.append(total)
  env.close()
  return {'mean': round(float(np.mean(returns)), 1),
          'std': round(float(np.std(returns)), 1), 'episodes': episodes}


def eval_endings(logdir, task):
  """How each evaluation episode ended, one letter each in the order they
  were stored: L time limit, T terminated; on CartPole T is C (the cart left
  the track, |x| > 2.4) or P (the pole fell, |angle| > 12 degrees)."""
  import numpy as np
  letters = []
  for filename in sorted((logdir / 'eval_episodes').glob('*.npz')):
    with np.load(filename) as episode:
      if not episode['is_terminal'][-1]:
        letters.append('L')
      elif task == 'gym_CartPole-v1':
        x, angle = episode['vector'][-1, 0], episode['vector'][-1, 2]
        fell = abs(angle) > np.radians(12)
        letters.append('C' if abs(x) > 2.4 else 'P' if fell else 'T')
      else:
        letters.append('T')
  return ''.join(letters)


def report(args, config, floor):
  frames = args.steps * config.action_repeat
  low = 0.9 * frames  # The last 10% of the run: frames in (low, frames].
  runs, scores = [], []
  for seed in args.seeds:
    logdir = seed_logdir(args, seed)
    curve = seeds.eval_curve(logdir)
    xs = [float(x) for x, _ in curve]
    ys = [float(y) for _, y in curve]
    window = [y for x, y in curve if low < x <= frames]
    spent = seeds.sittings(logdir)
    wall = sum(s['end'] - s['start'] for s in spent)
    runs.append({
        'seed': seed, 'frames': xs, 'eval_return': [round(y, 1) for y in ys],
        'agent_steps': seeds.stored_steps(logdir),
        'updates': seeds.updates_made(logdir), 'wall_s': round(wall, 1),
        'sittings': len(spent), 'exits': [s.get('exit') for s in spent],
        'eval_endings': eval_endings(logdir, args.task),
        'commits': sorted({str(s.get('commit')) for s in spent}),
        'last_10_percent_mean': (round(sum(window) / len(window), 1)
                                 if window else None),
        'last_10_percent_evals': len(window)})
    if xs:
      scores.append({'task': args.task, 'method': METHOD, 'seed': str(seed),
                     'xs': xs, 'ys': ys})
  means = [run['last_10_percent_mean'] for run in runs]
  out = pathlib.Path(args.out)
  png = plot_error = None
  if scores:
    out.parent.mkdir(parents=True, exist_ok=True)
    utils.atomic_write(out, lambda f: json.dump(scores, f), mode='w')
    result = subprocess.run([
        sys.executable, str(ROOT / 'common' / 'plot.py'), '--baselines',
        str(out), '--tasks', args.task, '--outdir', str(out.parent),
        '--name', out.stem, '--bins', '0', '--agg', 'per0',
        '--xlim', '0', str(frames)], capture_output=True, text=True)
    if result.returncode == 0:
      png = str(out.with_suffix('.png'))
    else:
      plot_error = result.stderr[-300:]
  return {
      'task': args.task, 'configs': ' '.join(CONFIGS), 'steps': args.steps,
      'frames': frames, 'eval_every': config.eval_every,
      'eval_eps': config.eval_eps, 'quick': args.quick,
      'precision': args.precision, 'jobs': args.jobs,
      'random_floor': floor, 'runs': runs, 'target': args.target,
      'seeds_at_target': sum(m is not None and m >= args.target for m in means),
      'seeds': len(args.seeds), 'scores': str(out) if scores else None,
      'png': png, 'plot_error': plot_error}


def main():
  parser = argparse.ArgumentParser(
      description='Learning on a gymnasium id with the vector block '
                  '(one JSON line).')
  parser.add_argument('--task', default='gym_CartPole-v1')
  parser.add_argument('--steps', type=int, default=20000, help='agent steps')
  parser.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
  parser.add_argument('--precision', type=int, choices=(16, 32),
                      help='the compute precision only (default: the '
                      "block's 16); 32 on a CPU without native bfloat16 "
                      '(no AVX512-BF16 or AMX), which emulates it slowly')
  parser.add_argument('--jobs', type=int, default=1,
                      help='seeds trained side by side')
  parser.add_argument('--logdir', default=None,
                      help=f'seeds train in LOGDIR/TASK/{METHOD}/SEED '
                           '(default: a temp dir)')
  parser.add_argument('--target', type=float, default=450.0,
                      help='the mean eval return over the last 10%% of the '
                           'run that a seed must reach')
  parser.add_argument('--floor_episodes', type=int, default=100)
  parser.add_argument('--out', default=None,
                      help='score file (default: scores/<task>.json)')
  parser.add_argument('--quick', action='store_true')
  args = parser.parse_args()
  if not args.task.startswith('gym_'):
    parser.error(f'--task {args.task!r} is not a gymnasium task (gym_<id>)')
  for name in ('steps', 'jobs', 'floor_episodes'):
    if getattr(args, name) < 1:
      parser.error(f'--{name} must be at least 1, got {getattr(args, name)}')
  if args.quick:
    args.steps, args.seeds, args.floor_episodes = 600, [0], 3
  config = configlib.parse(
      ['--configs', *CONFIGS, '--task', args.task] +
      (QUICK if args.quick else []))
  temp = None
  if args.logdir is None:
    temp = tempfile.TemporaryDirectory()
    args.logdir = temp.name
  if args.out is None:
    name = args.task.removeprefix('gym_').replace('/', '-').lower()
    args.out = (pathlib.Path(args.logdir) / f'gym-{name}-quick.json'
                if args.quick else ROOT / 'scores' / f'gym-{name}.json')
  floor = random_floor(args.task, config.action_repeat, args.floor_episodes)
  complete = seeds.run(
      {seed: seed_logdir(args, seed) for seed in args.seeds},
      lambda seed: train_command(args, seed), args.steps,
      config.action_repeat, args.jobs, name='learn_gym.py')
  result = report(args, config, floor)
  result['complete'] = complete and all(
      run['frames'] and run['frames'][-1] >= result['frames']
      for run in result['runs'])
  print(json.dumps(result))
  if temp:
    temp.cleanup()


if __name__ == '__main__':
  main()
