"""Train DreamerV2 from the command line.

  python3 dreamerv2/train.py --logdir ~/logdir/atari_pong/dreamerv2/1 \\
      --configs defaults atari --task atari_pong

The logdir holds everything of a run: config.yaml, metrics.jsonl, TensorBoard
events, train_episodes/ and eval_episodes/ (one .npz per finished episode) and
the checkpoint variables.pkl. Running the same command again resumes there:
weights, optimizer state, step counter and replay. Ctrl-C stops after the
current step, saves the checkpoint and exits 0.

`main(argv)` checks the command line and builds the envs of the task;
`run(config, make_envs)` is the training loop, shared with `api.train`.
"""

import collections
import contextlib
import functools
import os
import pathlib
import random
import re
import signal
import sys
import threading

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
# Before TensorFlow loads: hide its C++ info lines and the CUDA probe error.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

import numpy as np

from common import choices
from common import config as config_lib
from common import driver as driver_lib
from common import envs as envs_lib
from common import logger as logger_lib
from common import replay as replay_lib
from common import utils

# The values each choice key accepts, checked before TensorFlow loads.
CHOICES = {
    'envs_parallel': envs_lib.PARALLEL,
    'expl_behavior': tuple(choices.EXPL_BEHAVIORS),
    'actor_grad': choices.ACTOR_GRADS,
    'precision': choices.PRECISIONS,
}
CHECKPOINT = 'variables.pkl'


class ConfigError(ValueError):
  """A run that cannot start as configured: the message says what to change."""


class Stopped(Exception):
  """Raised inside the loop after Ctrl-C (SIGINT) or SIGTERM."""


def main(argv=None):
  config = config_lib.parse(argv)  # Exits 2 on bad flags.
  try:
    check_config(config)
    with mujoco_rendering_off():
      envs_lib.check_task(config.task)
    prepare_logdir(config.logdir)
  except (ConfigError, envs_lib.UnknownTask, envs_lib.MissingPackage) as e:
    exit_with_error(e)
  if config.task.startswith('dmc_') and config.envs_parallel != 'process':
    print('DMC envs run in processes (envs_parallel process): MuJoCo\'s EGL '
          'renderer and TensorFlow crash when loaded into one process.')
    config = config.update(envs_parallel='process')
  print(f'Task {config.task} · {config.envs} train env(s), '
        f'envs_parallel {config.envs_parallel}')
  try:
    run(config, functools.partial(make_task_envs, config))
  except ConfigError as e:
    exit_with_error(e)
  except utils.DiskFull as e:
    print(f'error: {e}. The checkpoint and the episodes written before are '
          f'kept; free some space and run the same command to resume.',
          file=sys.stderr)
    sys.exit(1)
  except KeyboardInterrupt:
    print('Aborted by a second Ctrl-C: the checkpoint was not saved.', file=sys.stderr)
    sys.exit(130)


def exit_with_error(error):
  print(f'error: {error}', file=sys.stderr)
  sys.exit(2)


def check_config(config):
  """Raises ConfigError for a value that would only fail later (no TF here)."""
  for key, accepted in CHOICES.items():
    if config[key] not in accepted:
      choices = ', '.join(str(choice) for choice in accepted)
      raise ConfigError(f'{key} {config[key]!r} is not one of: {choices}')
  for key in ('envs', 'eval_every', 'steps'):
    if config[key] < 1:
      raise ConfigError(f'{key} must be at least 1, got {config[key]}')


def prepare_logdir(path):
  """Creates the logdir; raises ConfigError if it cannot be written."""
  if not path:
    raise ConfigError(
        'no logdir given: use --logdir DIR, e.g. '
        '--logdir ~/logdir/atari_pong/dreamerv2/1')
  logdir = pathlib.Path(path).expanduser()
  try:
    logdir.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise ConfigError(f'cannot create logdir {logdir}: {e.strerror}') from None
  if not os.access(logdir, os.W_OK | os.X_OK):
    raise ConfigError(f'logdir {logdir} is not writable')
  return logdir


def make_task_envs(config):
  """(train envs, eval envs) of config.task, each wrapped in envs.Parallel."""
  logdir = pathlib.Path(config.logdir).expanduser()
  def env(mode, index):
    seed = config.seed + index + (1000 if mode == 'eval' else 0)
    ctor = functools.partial(
        envs_lib.make, config.task, mode, action_repeat=config.action_repeat,
        time_limit=config.time_limit, size=tuple(config.render_size),
        grayscale=config.atari_grayscale, camera=config.dmc_camera, seed=seed,
        outdir=logdir / 'crafter')
    return envs_lib.Parallel(ctor, config.envs_parallel)
  train_envs = [env('train', i) for i in range(config.envs)]
  eval_envs = [env('eval', i) for i in range(min(config.envs, config.eval_eps))]
  return train_envs, eval_envs


def run(config, make_envs, outputs=None):
  """Trains until the step counter reaches config.steps agent steps; it starts
  at the steps stored in logdir/train_episodes, so a second run resumes.

  make_envs() -> (train envs, eval envs): lists of interface envs (see
  common/envs.py); with no eval envs there is no evaluation. outputs are the
  logger's outputs (default: terminal, metrics.jsonl, TensorBoard). The envs
  are closed when this returns. Raises ConfigError when the agent cannot be
  built from the config or the checkpoint does not fit it.
  """
  logdir = pathlib.Path(config.logdir).expanduser()
  changes = saved_config_changes(logdir / 'config.yaml', config)
  if changes:
    print('Resuming with overrides that differ from the saved config:\n  '
          + '\n  '.join(changes))

  import tensorflow as tf
  from common import nets
  random.seed(config.seed)
  np.random.seed(config.seed)
  tf.random.set_seed(config.seed)
  for gpu in tf.config.list_physical_devices('GPU'):
    tf.config.experimental.set_memory_growth(gpu, True)
  dtype = nets.dtype_for(config.precision)  # The agent's own; nothing global.
  device = 'GPU' if tf.config.list_physical_devices('GPU') else 'CPU'
  scaling = ' with loss scaling' if dtype == tf.float16 else ''
  print(f'Logdir {logdir}')
  print(f'Precision {config.precision}: {dtype.name} on {device}{scaling} · '
        f'tf.function {"on" if config.jit else "off"}')

  with ignore_sigint():  # Env processes inherit it: Ctrl-C is ours to handle.
    train_envs, eval_envs = make_envs()
  stop = threading.Event()
  handlers = install_stop_handler(stop)
  try:
    train_loop(config, logdir, train_envs, eval_envs, outputs, stop)
  finally:
    for env in train_envs + eval_envs:
      try:
        env.close()
      except Exception as e:
        print(f'Closing an env failed: {e}', file=sys.stderr)
    restore_handlers(handlers)


def train_loop(config, logdir, train_envs, eval_envs, outputs, stop):
  """Prefill, pretrain, then act, store and train; evaluate and save every
  eval_every steps. Returns when done or after `stop` is set."""
  from common import tfutils
  from dreamerv2 import agent as agent_lib

  # The agent first: a checkpoint of other model sizes stops the run before
  # the config is saved over the old one and before any env step.
  obs_space, act_space = train_envs[0].obs_space, train_envs[0].act_space
  try:
    agent = agent_lib.Agent(config, obs_space, act_space)
  except ValueError as e:
    raise ConfigError(f'cannot build the agent from this config: {e}') from None
  checkpoint = logdir / CHECKPOINT
  if checkpoint.exists():
    try:
      tfutils.load_checkpoint(agent, checkpoint)
    except tfutils.CheckpointMismatch as e:
      changes = saved_config_changes(logdir / 'config.yaml', config)
      hint = f' (config changes: {", ".join(changes)})' if changes else ''
      raise ConfigError(f'{e}{hint}') from None
  config.save(logdir / 'config.yaml')
  count = lambda variables: sum(int(np.prod(v.shape)) for v in variables)
  print(f'Agent: {count(agent.trainable_variables) / 1e6:.2f}M parameters '
        f'(world model {count(agent.wm.trainable_variables) / 1e6:.2f}M)')

  train_replay = replay_lib.Replay(
      logdir / 'train_episodes', seed=config.seed, **config.replay)
  eval_replay = replay_lib.Replay(
      logdir / 'eval_episodes', capacity=config.replay.capacity // 100,
      minlen=config.dataset.length, maxlen=config.dataset.length)
  step = utils.Counter(train_replay.stats['total_steps'])  # Agent steps.
  if outputs is None:
    # The replay's counts go to the files only; the progress line stays short.
    hide_counts = r'^(?!(train|eval)_(total|loaded)_(steps|episodes)$)'
    outputs = [
        logger_lib.TerminalOutput(config.steps * config.action_repeat, hide_counts),
        logger_lib.JSONLOutput(logdir),
        logger_lib.TensorBoardOutput(logdir)]
  logger = logger_lib.Logger(step, outputs, multiplier=config.action_repeat)
  print(f'Train replay: {train_replay.stats["total_episodes"]} episodes, '
        f'{int(step)} steps stored.')

  should_train = utils.Every(config.train_every)
  should_log = utils.Every(config.log_every)
  should_video = {
      'train': utils.Every(config.log_every),
      'eval': utils.Every(config.eval_every)}
  should_explore = utils.Until(config.expl_until // config.action_repeat)
  can_report = config.dataset.length > 5  # The open-loop video has 5 context steps.
  metrics = collections.defaultdict(list)

  def per_episode(episode, mode):
    length = len(episode['reward']) - 1
    logger.scalar(f'{mode}_return', episode['reward'].astype(np.float64).sum())
    logger.scalar(f'{mode}_length', length)
    for key, value in episode.items():
      if re.match(config.log_keys_sum, key):
        logger.scalar(f'sum_{mode}_{key}', value.sum())
      if re.match(config.log_keys_mean, key):
        logger.scalar(f'mean_{mode}_{key}', value.mean())
      if re.match(config.log_keys_max, key):
        logger.scalar(f'max_{mode}_{key}', value.max(0).mean())
    if should_video[mode](step):
      for key in config.log_keys_video:
        if key in episode:
          # The first 500 frames: an Atari episode of 27k frames is a huge GIF.
          logger.video(f'{mode}_policy_{key}', episode[key][:500])
    replay = {'train': train_replay, 'eval': eval_replay}[mode]
    logger.add(replay.stats, prefix=mode)
    logger.write()

  def store_eval_episode(episode, worker):
    # Eval episodes only feed the open-loop videos, which need dataset.length.
    if len(episode['action']) - 1 >= config.dataset.length:
      eval_replay.add_episode(episode)

  def check_stop(transition, worker):
    if stop.is_set():
      raise Stopped()

  train_driver = driver_lib.Driver(train_envs)
  train_driver.on_step(lambda transition, worker: step.increment())
  train_driver.on_step(train_replay.add_step)  # Saves the episode at its last step.
  train_driver.on_reset(train_replay.add_step)
  train_driver.on_episode(lambda episode, worker: per_episode(episode, 'train'))
  train_driver.on_step(check_stop)
  eval_driver = driver_lib.Driver(eval_envs)
  eval_driver.on_episode(store_eval_episode)
  eval_driver.on_episode(lambda episode, worker: per_episode(episode, 'eval'))
  eval_driver.on_step(check_stop)

  trained = checkpoint.exists()  # Whether there is anything to save on exit.
  try:
    prefill = max(0, config.prefill - int(step))
    if prefill:
      print(f'Prefill the replay with a random policy ({prefill} steps).')
      random_policy = make_random_policy(act_space['action'], config.seed)
      # At least one finished episode, so the replay has data to sample. The
      # episode in progress then continues with the agent (no reset), so the
      # replay never joins two episodes into one.
      train_driver(random_policy, steps=prefill, episodes=1)
      if eval_envs:
        # As the published release: one random-policy evaluation episode, so
        # the curve starts at the prefill step and the eval replay has an
        # episode for the first open-loop video.
        print('Evaluate the random policy (1 episode).')
        eval_driver(make_random_policy(act_space['action'], config.seed + 1000),
                    episodes=1)
        eval_driver.reset()
    if not train_replay.stats['loaded_episodes']:
      raise ConfigError(
          f'the train replay holds no episode of at least replay.minlen = '
          f'{config.replay.minlen} steps to learn from: lower --replay.minlen '
          f'or raise --prefill')
    train_dataset = iter(train_replay.dataset(**config.dataset))
    eval_dataset = None
    if not trained:
      print(f'Pretrain the agent ({config.pretrain} updates).')
      agent.tfstep.assign(int(step))
      for _ in range(config.pretrain):
        agent.train(next(train_dataset))
      trained = True

    def train_policy(obs, state):
      mode = 'explore' if should_explore(step) else 'train'
      return agent.policy(obs, state, mode)

    def eval_policy(obs, state):
      return agent.policy(obs, state, 'eval')

    def train_step(transition, worker):
      if should_train(step):
        agent.tfstep.assign(int(step))  # Schedules read the agent step.
        for _ in range(config.train_steps):
          for name, value in agent.train(next(train_dataset)).items():
            metrics[name].append(float(value))
      if should_log(step):
        logger.add({name: np.mean(values) for name, values in metrics.items()})
        metrics.clear()
        if can_report:
          logger.add(agent.report(next(train_dataset)), prefix='train')
        logger.add(train_replay.stats, prefix='train')
        logger.write(fps=True)

    train_driver.on_step(train_step)

    def evaluate():
      nonlocal eval_dataset
      logger.write()
      print('Start evaluation.')
      if can_report and eval_replay.stats['loaded_episodes']:
        if eval_dataset is None:
          eval_dataset = iter(eval_replay.dataset(**config.dataset))
        logger.add(agent.report(next(eval_dataset)), prefix='eval')
      eval_driver.reset()  # Fresh episodes and policy state for each evaluation.
      eval_driver(eval_policy, episodes=config.eval_eps)

    while int(step) < config.steps:
      logger.write()
      if eval_envs:
        evaluate()
      print('Start training.')
      # Phases end at multiples of eval_every, also after a resume.
      until = (int(step) // config.eval_every + 1) * config.eval_every
      train_driver(train_policy, steps=min(until, config.steps) - int(step))
      tfutils.save_checkpoint(agent, checkpoint)
      if eval_envs and int(step) >= config.steps:
        evaluate()  # The curve ends with the final policy's score.
    logger.write()
    print(f'Finished {int(step)} steps; checkpoint {checkpoint}.')
  except Stopped:
    logger.write()
    if trained:
      tfutils.save_checkpoint(agent, checkpoint)
      print(f'Stopped at step {int(step)}: saved checkpoint {checkpoint}. '
            f'Run the same command to resume.')
    else:
      print(f'Stopped at step {int(step)} before training; finished episodes '
            f'are kept in {logdir / "train_episodes"}.')


def make_random_policy(space, seed):
  """Uniform random actions: one-hot for discrete spaces, else in [-1, 1]."""
  rng = np.random.default_rng(seed)
  discrete = getattr(space, 'discrete', False)
  size = space.shape[0]
  def policy(obs, state):
    batch = len(obs['is_first'])
    if discrete:
      action = np.eye(size, dtype=np.float32)[rng.integers(size, size=batch)]
    else:
      action = rng.uniform(-1, 1, (batch, size)).astype(np.float32)
    return {'action': action}, None
  return policy


def saved_config_changes(path, config):
  """How config differs from the one at path: ['rssm.deter: 600 -> 400']."""
  if not path.exists():
    return []
  try:
    saved = config_lib.Config.load(path)
  except Exception as e:
    print(f'Cannot read the saved {path} ({e}); it will be replaced.')
    return []
  return [f'{key}: {old} -> {new}' for key, old, new in config_lib.diff(saved, config)]


def install_stop_handler(stop):
  """Ctrl-C or SIGTERM sets `stop`; a second Ctrl-C interrupts at once.

  Returns the previous handlers, or None off the main thread (where Python
  cannot install signal handlers, e.g. api.train in a worker thread).
  """
  if threading.current_thread() is not threading.main_thread():
    return None
  def handler(signum, frame):
    if stop.is_set() and signum == signal.SIGINT:
      raise KeyboardInterrupt()
    stop.set()
    print('\nStopping after the current step and saving the checkpoint '
          '(Ctrl-C again quits without saving).', flush=True)
  return {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}


def restore_handlers(handlers):
  for sig, handler in (handlers or {}).items():
    signal.signal(sig, handler)


@contextlib.contextmanager
def mujoco_rendering_off():
  """Checking a DMC task name imports dm_control; without a renderer, so that
  this process never loads EGL (the env processes render)."""
  previous = os.environ.get('MUJOCO_GL')
  os.environ['MUJOCO_GL'] = 'disable'
  try:
    yield
  finally:
    if previous is None:
      del os.environ['MUJOCO_GL']
    else:
      os.environ['MUJOCO_GL'] = previous


@contextlib.contextmanager
def ignore_sigint():
  """Processes started inside ignore SIGINT: a terminal's Ctrl-C reaches the
  whole process group, and the env processes must wait for close()."""
  if threading.current_thread() is not threading.main_thread():
    yield
    return
  previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
  try:
    yield
  finally:
    signal.signal(signal.SIGINT, previous)


if __name__ == '__main__':
  main()
