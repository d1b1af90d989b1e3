"""Evaluate a trained agent outside the training loop.

  python3 dreamerv2/eval.py --logdir ~/logdir/atari_pong/dreamerv2/1 \\
      --episodes 10

Reads RUN/config.yaml and a checkpoint (default: the newest), builds the
task's envs with the run's settings (action repeat, time limit, size, sticky
actions, camera), runs the episodes with the chosen policy and writes
RUN/eval/<checkpoint frames>/eval.json (per-episode return and length; mean,
std, min, max; the checkpoint and its step; the command) plus GIFs of the
first --videos episodes; the same JSON is the last line printed. It may run
while the run trains: it reads only complete checkpoints (they are renamed
into place when written) and writes nothing but its own directory.
"""

import argparse
import json
import os
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

import numpy as np

from common import driver as driver_lib
from common import envs as envs_lib
from common import errors
from common import logger as logger_lib
from common import rundir
from common import utils
from common.config import ConfigError
from dreamerv2 import build

VIDEO_FRAMES = 1000  # A GIF holds an episode's first 1000 frames at most.


def parse(argv):
  parser = argparse.ArgumentParser(
      prog='dreamerv2/eval.py', description=__doc__.split('\n\n')[0])
  parser.add_argument('--logdir', required=True, help='the run to evaluate')
  parser.add_argument('--episodes', type=int, default=10)
  parser.add_argument('--checkpoint', default=None,
                      help='a checkpoint file (default: the run\'s newest)')
  parser.add_argument('--policy', choices=('eval', 'train'), default='eval',
                      help='eval: the actor\'s mode (default); train: samples')
  parser.add_argument('--videos', type=int, default=1,
                      help='GIFs of the first N episodes (default 1)')
  parser.add_argument('--outdir', default=None,
                      help='default: RUN/eval/<checkpoint frames>')
  parser.add_argument('--task', default=None,
                      help='another task with the same spaces '
                           '(default: the run\'s)')
  parser.add_argument('--seed', type=int, default=None,
                      help='env and sampling seed '
                           f'(default: the run\'s seed + {build.LOAD_SEED})')
  return parser.parse_args(argv)


def check_spaces(run_spaces, env, task):
  """ConfigError unless env has the observations and actions the agent has."""
  want, have = run_spaces['obs_space'], env.obs_space
  for key, space in want.items():
    if key.startswith('log_'):
      continue
    if (key not in have or have[key].shape != space.shape
        or have[key].dtype != space.dtype):
      got = f'{have[key].shape} {have[key].dtype}' if key in have else 'none'
      raise ConfigError(
          f'task {task} has other observations than the run: {key} is '
          f'{space.shape} {space.dtype} there, {got} here')
  want, have = run_spaces['act_space']['action'], env.act_space['action']
  kind = lambda space: (getattr(space, 'discrete', False),
                        getattr(space, 'parts', None))
  if want.shape != have.shape or kind(want) != kind(have):
    raise ConfigError(
        f'task {task} has other actions than the run: {want} there, '
        f'{have} here')


def main(argv=None):
  args = parse(argv)
  with errors.exit_on_errors():
    evaluate(args)


def evaluate(args):
  """Checks the run, the task and the checkpoint before TensorFlow loads,
  then loads the agent once and runs the episodes."""
  if args.episodes < 1:
    raise ConfigError(f'--episodes must be at least 1, got {args.episodes}')
  if args.videos < 0:
    raise ConfigError(f'--videos must be 0 or more, got {args.videos}')
  logdir = pathlib.Path(args.logdir).expanduser()
  config, spaces = rundir.load(logdir)
  if spaces is not None and not spaces['task']:
    raise ConfigError(
        f'{logdir} was trained through api.train on a Python env: load it '
        f'with api.load and run it on that env')
  task = args.task or config.task
  with build.mujoco_rendering_off():
    envs_lib.check_task(task, config.gym_kwargs)
  checkpoint = rundir.find_checkpoint(logdir, args.checkpoint)
  from dreamerv2 import api
  seed = api.load_seed(config, args.seed)
  try:
    env = api.make_env(config, 'eval', seed, task)
  except ValueError as e:
    raise ConfigError(
        f'cannot build task {task} with the run\'s settings: {e}') from None
  try:
    if spaces is not None:
      check_spaces(spaces, env, task)
    agent = api.load(logdir, checkpoint, seed)
    outdir = pathlib.Path(
        args.outdir or logdir / 'eval' / str(agent.frames)).expanduser()
    results = run_episodes(agent, env, args, outdir)
  finally:
    env.close()
  returns = np.array([r['return'] for r in results])
  report = {
      'run': str(logdir), 'task': task, 'checkpoint': str(checkpoint),
      'step': agent.frames, 'agent_step': agent.step, 'policy': args.policy,
      'seed': seed, 'episodes': results, 'mean': float(returns.mean()),
      'std': float(returns.std()), 'min': float(returns.min()),
      'max': float(returns.max()),
      'command': ' '.join(['python3', 'dreamerv2/eval.py'] + sys.argv[1:]),
      'videos': [r['video'] for r in results if r.get('video')]}
  text = json.dumps(report)
  utils.atomic_write(outdir / 'eval.json', lambda f: f.write(text), mode='w')
  print(text)


def run_episodes(agent, env, args, outdir):
  """Runs args.episodes episodes with the Driver; prints a progress line
  after each."""
  outdir.mkdir(parents=True, exist_ok=True)
  print(f'Evaluating {agent.checkpoint} (step {agent.frames} frames) with the '
        f'{args.policy} policy for {args.episodes} episodes into {outdir}',
        flush=True)
  results, start = [], time.time()

  def on_episode(episode, worker):
    index = len(results)
    result = {'return': float(episode['reward'].astype(np.float64).sum()),
              'length': len(episode['reward']) - 1}
    if 'image' in episode and index < args.videos:
      path = outdir / f'episode-{index}.gif'
      gif = logger_lib.encode_gif(episode['image'][:VIDEO_FRAMES], 20)
      utils.atomic_write(path, lambda f: f.write(gif))
      result['video'] = str(path)
    results.append(result)
    spent = time.time() - start
    left = spent / len(results) * (args.episodes - len(results))
    print(f'Episode {len(results)}/{args.episodes}: return '
          f'{result["return"]:.1f}, length {result["length"]} · '
          f'{logger_lib.format_duration(left)} left', flush=True)

  driver = driver_lib.Driver([env])
  driver.on_episode(on_episode)
  driver(lambda obs, state: agent.policy(obs, state, args.policy),
         episodes=args.episodes)
  return results


if __name__ == '__main__':
  main()
