"""Agent steps per second of an env with random actions; one JSON line.

  .venv/bin/python bench/env_speed.py --task atari_pong --steps 5000
  .venv/bin/python bench/env_speed.py --envs 2 --parallel process

`env_steps_per_second` steps the env(s) in a bare loop;
`driver_steps_per_second` runs the same through the Driver with a random policy
(stacking, callbacks and episode assembly included). Frames per second = agent
steps x action repeat. For one Atari env it also times gymnasium's
AtariPreprocessing on the same protocol in the same run (`ours_over_gymnasium`);
for several envs, one env with the same --parallel (`speedup_over_one_env`)
and, for threads or processes, one env in this process
(`speedup_over_one_env_in_process`).
"""

import argparse
import functools
import json
import pathlib
import sys
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from common import driver as driver_lib  # noqa: E402
from common import envs  # noqa: E402


def random_actions(space, count, rng):
  """[count, A] actions: one-hot for discrete spaces, uniform otherwise."""
  if getattr(space, 'discrete', False):
    return np.eye(space.shape[0], dtype=np.float32)[
        rng.integers(0, space.shape[0], count)]
  return rng.uniform(
      space.low, space.high, (count,) + space.shape).astype(np.float32)


def bare_loop(env_list, steps, rng):
  """Step all envs together (non-blocking) until `steps` agent steps."""
  space = env_list[0].act_space['action']
  for env in env_list:
    env.reset()
  done, episodes = 0, 0
  start = time.perf_counter()
  while done < steps:
    actions = random_actions(space, len(env_list), rng)
    promises = [env.step({'action': a}, blocking=False)
                for env, a in zip(env_list, actions)]
    for env, promise in zip(env_list, promises):
      if promise()['is_last']:
        env.reset()
        episodes += 1
    done += len(env_list)
  return done, time.perf_counter() - start, episodes


def driver_loop(env_list, steps, rng):
  driver = driver_lib.Driver(env_list)
  space = env_list[0].act_space['action']
  episodes = []
  driver.on_episode(lambda ep, worker: episodes.append(len(ep['reward']) - 1))

  def policy(obs, state):
    return {'action': random_actions(space, len(obs['is_first']), rng)}, state

  start = time.perf_counter()
  driver(policy, steps=steps)
  return steps, time.perf_counter() - start, len(episodes)


def gymnasium_loop(game, steps, repeat, seed):
  """The same protocol through gymnasium's AtariPreprocessing (what the
  original used): sticky actions 0.25 on the ALE env, the full action set,
  frame skip `repeat` with max-pooling, 1-30 no-ops, grayscale, 64x64."""
  import ale_py
  import gymnasium
  gymnasium.register_envs(ale_py)
  name = ''.join(part.capitalize() for part in game.split('_'))
  env = gymnasium.make(f'ALE/{name}-v5', frameskip=1,
                       repeat_action_probability=0.25, full_action_space=True)
  env = gymnasium.wrappers.AtariPreprocessing(
      env, noop_max=30, frame_skip=repeat, screen_size=64, grayscale_obs=True,
      terminal_on_life_loss=False)
  rng = np.random.default_rng(seed)
  env.reset(seed=seed)
  done, episodes = 0, 0
  start = time.perf_counter()
  while done < steps:
    _, _, terminated, truncated, _ = env.step(
        int(rng.integers(env.action_space.n)))
    if terminated or truncated:
      env.reset()
      episodes += 1
    done += 1
  seconds = time.perf_counter() - start
  env.close()
  return done, seconds, episodes


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--task', default='atari_pong')
  parser.add_argument('--steps', type=int, default=5000)
  parser.add_argument('--envs', type=int, default=1)
  parser.add_argument('--parallel', default='none',
                      choices=['none', 'thread', 'process'])
  parser.add_argument('--action_repeat', type=int, default=None,
                      help='default: 4 for atari, 2 for dmc, 1 otherwise')
  parser.add_argument('--time_limit', type=int, default=27000)
  args = parser.parse_args()
  try:
    envs.check_task(args.task)
  except (envs.UnknownTask, envs.MissingPackage) as error:
    parser.exit(2, f'error: {error}\n')
  repeat = args.action_repeat or {'atari': 4, 'dmc': 2}.get(
      args.task.split('_')[0], 1)
  ctor = functools.partial(
      envs.make, args.task, action_repeat=repeat, time_limit=args.time_limit)
  env_list = [
      envs.Parallel(functools.partial(ctor, seed=i), args.parallel)
      for i in range(args.envs)]
  rng = np.random.default_rng(0)
  bare = bare_loop(env_list, args.steps, rng)
  driven = driver_loop(env_list, args.steps, rng)
  for env in env_list:
    env.close()
  def one_env_rate(strategy, seed):
    """Steps per second of one env (seed 0) built with `strategy`."""
    env = envs.Parallel(functools.partial(ctor, seed=0), strategy)
    try:
      steps, seconds, _ = bare_loop(
          [env], args.steps, np.random.default_rng(seed))
    finally:
      env.close()
    return steps / seconds

  rate = bare[0] / bare[1]
  compare = {}
  if args.envs > 1:
    # The same strategy with one env, in this run: what the extra envs buy.
    one = one_env_rate(args.parallel, 2)
    compare['one_env_steps_per_second'] = round(one, 1)
    compare['speedup_over_one_env'] = round(rate / one, 3)
    if args.parallel != 'none':
      # And one env in this process, envs_parallel none: the default config.
      local = one_env_rate('none', 3)
      compare['one_env_in_process_steps_per_second'] = round(local, 1)
      compare['speedup_over_one_env_in_process'] = round(rate / local, 3)
  if args.task.startswith('atari_') and args.envs == 1:
    # Ours against gymnasium's wrapper, one env each, in this run.
    ours = one_env_rate('none', 1)
    theirs = gymnasium_loop(envs.atari_game(args.task), args.steps, repeat, 0)
    compare['ours_steps_per_second'] = round(ours, 1)
    compare['gymnasium_preprocessing_steps_per_second'] = round(
        theirs[0] / theirs[1], 1)
    compare['ours_over_gymnasium'] = round(
        compare['ours_steps_per_second']
        / compare['gymnasium_preprocessing_steps_per_second'], 3)
  print(json.dumps({
      'task': args.task,
      'envs': args.envs,
      'parallel': args.parallel,
      'action_repeat': repeat,
      'steps': args.steps,
      'env_steps_per_second': round(rate, 1),
      'env_frames_per_second': round(bare[0] * repeat / bare[1], 1),
      'driver_steps_per_second': round(driven[0] / driven[1], 1),
      'episodes': bare[2] + driven[2],
      **compare,
  }))


if __name__ == '__main__':
  main()
