"""Agent steps per second of an env with random actions; one JSON line.

  .venv/bin/python bench/env_speed.py --task atari_pong --steps 5000
  .venv/bin/python bench/env_speed.py --envs 2 --parallel process

`env_steps_per_second` steps the env(s) in a bare loop;
`driver_steps_per_second` runs the same through the Driver with a random policy
(stacking, callbacks and episode assembly included). Frames per second = agent
steps x action repeat. For one Atari env it also times gymnasium's
AtariPreprocessing on the same protocol in the same run (`ours_over_gymnasium`);
for several envs, one env with the same --parallel (`speedup_over_one_env`),
for threads or processes one env in this process
(`speedup_over_one_env_in_process`), and what the machine allows: as many
env loops in processes of their own that never wait for each other, against
one such loop alone (`independent_speedup`), and the envs' rate over theirs
(`envs_over_independent`). The loops run in --rounds interleaved
rounds of --steps each; rates and ratios are the medians over the rounds,
with every round's figure in the `_rounds` lists.
"""

import argparse
import functools
import json
import multiprocessing
import pathlib
import pickle
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


class Independent:
  """An env loop in a process of its own: no messages while it runs.

  Several of them, started together, step as fast as the machine lets that
  many env loops run at once; nothing a driver does can beat them.
  """

  def __init__(self, ctor):
    context = multiprocessing.get_context('spawn')
    self._conn, child = context.Pipe()
    self._process = context.Process(
        target=_independent_worker, args=(child, pickle.dumps(ctor)),
        daemon=True)
    self._process.start()
    child.close()
    self._conn.recv()  # Built.

  def start(self, steps, seed):
    self._conn.send((steps, seed))

  def wait(self):
    return self._conn.recv()

  def close(self):
    self._conn.send(None)
    self._process.join(10)


def _independent_worker(conn, ctor):
  env = envs.Parallel(pickle.loads(ctor), 'none')
  conn.send(True)
  while (request := conn.recv()) is not None:
    steps, seed = request
    conn.send(bare_loop([env], steps, np.random.default_rng(seed)))
  env.close()


def independent_loop(workers, steps, seed):
  """`steps` agent steps split over the workers (rounded up, as the bare
  loop rounds up to whole rounds), run at once; the wall time from starting
  the first to the last one's end."""
  each = -(-steps // len(workers))
  start = time.perf_counter()
  for index, worker in enumerate(workers):
    worker.start(each, seed + [index])
  results = [worker.wait() for worker in workers]
  seconds = time.perf_counter() - start
  return (sum(done for done, _, _ in results), seconds,
          sum(count for _, _, count in results))


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
  parser.add_argument('--rounds', type=int, default=5,
                      help='interleaved rounds of the loops compared')
  args = parser.parse_args()
  for flag in ('steps', 'envs', 'rounds'):
    if getattr(args, flag) < 1:
      parser.exit(2, f'error: --{flag} must be at least 1; got '
                  f'{getattr(args, flag)}.\n')
  try:
    envs.check_task(args.task)
  except (envs.UnknownTask, envs.MissingPackage,
          envs.UnsupportedSpace) as error:
    parser.exit(2, f'error: {error}\n')
  repeat = args.action_repeat or {'atari': 4, 'dmc': 2}.get(
      args.task.split('_')[0], 1)
  ctor = functools.partial(
      envs.make, args.task, action_repeat=repeat, time_limit=args.time_limit)
  env_list = [
      envs.Parallel(functools.partial(ctor, seed=i), args.parallel)
      for i in range(args.envs)]
  opened = list(env_list)  # Every env built here, closed at the end.

  def one_env(strategy):
    env = envs.Parallel(functools.partial(ctor, seed=0), strategy)
    opened.append(env)
    return [env]

  def bare(group):
    return lambda index, position: bare_loop(
        group, args.steps, np.random.default_rng([index, position]))

  def independent(count):
    workers = [Independent(functools.partial(ctor, seed=i))
               for i in range(count)]
    opened.extend(workers)
    return lambda index, position: independent_loop(
        workers, args.steps, [index, position])

  # Each loop by name; the first is what is measured, the rest what it is
  # compared with in this run.
  loops = {'envs': bare(env_list)}
  if args.envs > 1:
    # The same strategy with one env: what the extra envs buy.
    loops['one_env'] = bare(one_env(args.parallel))
    if args.parallel != 'none':
      # And one env in this process, envs_parallel none: the default config.
      loops['one_env_in_process'] = bare(one_env('none'))
    # The machine's own bound: as many loops that never wait for each other.
    loops['independent'] = independent(args.envs)
    loops['one_independent'] = independent(1)
  if args.task.startswith('atari_') and args.envs == 1:
    # Ours against gymnasium's wrapper, one env each.
    loops['ours'] = bare(one_env('none'))
    loops['gymnasium_preprocessing'] = lambda index, _: gymnasium_loop(
        envs.atari_game(args.task), args.steps, repeat, index)
  # Rounds interleave the loops, so that a change of the machine's speed
  # during the run (1.5x within half an hour, bench/README.md) meets them all;
  # a ratio is the median of the rounds' ratios.
  rates = {name: [] for name in loops}
  episodes = 0
  for index in range(args.rounds):
    for position, (name, loop) in enumerate(loops.items()):
      steps, seconds, count = loop(index, position)
      rates[name].append(steps / seconds)
      episodes += count if name == 'envs' else 0
  driven = driver_loop(env_list, args.steps, np.random.default_rng(0))
  episodes += driven[2]
  for env in opened:
    env.close()

  figures = {}

  def report(key, values, digits):
    """The median of one figure over the rounds, and every round's value."""
    figures[key] = round(float(np.median(values)), digits)
    figures[f'{key}_rounds'] = [round(x, digits) for x in values]

  for name in rates:
    key = 'env' if name == 'envs' else name
    report(f'{key}_steps_per_second', rates[name], 1)
  for key, (name, over) in {
      'speedup_over_one_env': ('envs', 'one_env'),
      'speedup_over_one_env_in_process': ('envs', 'one_env_in_process'),
      'independent_speedup': ('independent', 'one_independent'),
      'envs_over_independent': ('envs', 'independent'),
      'ours_over_gymnasium': ('ours', 'gymnasium_preprocessing')}.items():
    if over in rates:
      report(key, [a / b for a, b in zip(rates[name], rates[over])], 3)
  rate = float(np.median(rates['envs']))
  print(json.dumps({
      'task': args.task,
      'envs': args.envs,
      'parallel': args.parallel,
      'action_repeat': repeat,
      'steps': args.steps,
      'rounds': args.rounds,
      'env_frames_per_second': round(rate * repeat, 1),
      'driver_steps_per_second': round(driven[0] / driven[1], 1),
      'episodes': episodes,
      **figures,
  }))


if __name__ == '__main__':
  main()
