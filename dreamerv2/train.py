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
import json
import os
import pathlib
import pickle
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

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
    'distribute.strategy': choices.DISTRIBUTE,
}
CHECKPOINT = 'variables.pkl'
# The kept checkpoints: checkpoints/variables-<frames>.pkl.
SNAPSHOTS = 'checkpoints'
WARM_START = ('all', 'world_model')  # warm_start.only: which weights to load.
SPACES = 'spaces.pkl'  # The agent's observation and action spaces.


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
  except EnvFailed as e:
    if e.traceback:
      print(e.traceback, file=sys.stderr)
    print(f'error: {e}. The run is saved; run the same command to resume.',
          file=sys.stderr)
    sys.exit(1)
  except utils.DiskFull as e:
    print(f'error: {e}. The checkpoint and the episodes written before are '
          f'kept; free some space and run the same command to resume.',
          file=sys.stderr)
    sys.exit(1)
  except KeyboardInterrupt:
    print('Aborted by a second Ctrl-C: the checkpoint was not saved.',
          file=sys.stderr)
    sys.exit(130)


def exit_with_error(error):
  print(f'error: {error}', file=sys.stderr)
  sys.exit(2)


def check_config(config):
  """Raises ConfigError for a value that would only fail later (no TF here)."""
  flat = config.flat
  for key, accepted in CHOICES.items():
    if flat[key] not in accepted:
      names = ', '.join(str(choice) for choice in accepted)
      raise ConfigError(f'{key} {flat[key]!r} is not one of: {names}')
  check_distribute(config)
  if config.warm_start.only not in WARM_START:
    raise ConfigError(
        f'warm_start.only {config.warm_start.only!r} is not one of: '
        f'{", ".join(WARM_START)}')
  if config.warm_start.checkpoint:
    path = pathlib.Path(config.warm_start.checkpoint).expanduser()
    if not path.is_file():
      raise ConfigError(f'warm_start.checkpoint {path} is not a file')
  if config.checkpoints.keep < 0:
    raise ConfigError(
        f'checkpoints.keep must be 0 (no snapshots) or more, got '
        f'{config.checkpoints.keep}')
  for key in ('envs', 'eval_every', 'steps'):
    if config[key] < 1:
      raise ConfigError(f'{key} must be at least 1, got {config[key]}')


def check_distribute(config):
  """ConfigError for a distribute setting that cannot work, where that is
  known without TensorFlow (with GPUs, Agent checks the batch)."""
  kind, devices = config.distribute.strategy, config.distribute.cpu_devices
  if devices < 0 or (devices and kind == 'none'):
    raise ConfigError(
        f'distribute.cpu_devices {devices}: use it with distribute.strategy '
        f'mirrored (0 = the GPUs)')
  replicas = devices if kind == 'mirrored' and devices else None
  if kind == 'multi_worker':
    try:
      cluster = json.loads(os.environ['TF_CONFIG'])['cluster']
    except (KeyError, ValueError, TypeError):
      raise ConfigError(
          'distribute.strategy multi_worker needs the TF_CONFIG environment '
          'variable ({"cluster": {"worker": [...]}, "task": {...}}): see '
          'docs/scaling.md') from None
    replicas = sum(len(cluster.get(kind, [])) for kind in ('chief', 'worker'))
    if not config.task or not config.logdir:
      raise ConfigError(
          'distribute.strategy multi_worker needs a task and a logdir')
  if replicas and config.dataset.batch % replicas:
    raise ConfigError(
        f'dataset.batch {config.dataset.batch} does not divide among the '
        f'{replicas} replicas of distribute.strategy {kind}: use a multiple '
        f'of {replicas}')


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


def make_task_envs(config, modes=('train', 'eval'), seed=None):
  """(train envs, eval envs) of config.task, each wrapped in envs.Parallel:
  config.envs train envs and min(envs, eval_eps) eval envs. `modes` limits
  which are built; `seed` replaces config.seed."""
  seed = config.seed if seed is None else seed
  counts = {'train': config.envs, 'eval': min(config.envs, config.eval_eps)}
  built = {mode: [] for mode in ('train', 'eval')}
  for mode in modes:
    for index in range(counts[mode]):
      built[mode].append(envs_lib.Parallel(functools.partial(
          make_env, config, mode,
          seed + index + (1000 if mode == 'eval' else 0)),
          config.envs_parallel, name=f'{config.task} {mode} env {index}'))
  return built['train'], built['eval']


def make_env(config, mode, seed):
  """One env of config.task with the run's settings (action repeat, time
  limit, size, grayscale, camera)."""
  logdir = pathlib.Path(config.logdir).expanduser()
  return envs_lib.make(
      config.task, mode, action_repeat=config.action_repeat,
      time_limit=config.time_limit, size=tuple(config.render_size),
      grayscale=config.atari_grayscale, camera=config.dmc_camera, seed=seed,
      outdir=logdir / 'crafter')


def run(config, make_envs, outputs=None, task=True):
  """Trains until the step counter reaches config.steps agent steps; it starts
  at the steps stored in logdir/train_episodes, so a second run resumes.

  make_envs() -> (train envs, eval envs): lists of interface envs (see
  common/envs.py); with no eval envs there is no evaluation. outputs are the
  logger's outputs (default: terminal, metrics.jsonl, TensorBoard). The envs
  are closed when this returns. Raises ConfigError when the agent cannot be
  built from the config or the checkpoint does not fit it. task: whether
  the envs are config.task's (False for api.train's own env).
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
  strategy = make_strategy(config)  # Before anything else runs in TensorFlow.
  dtype = nets.dtype_for(config.precision)  # The agent's own; nothing global.
  device = 'GPU' if tf.config.list_physical_devices('GPU') else 'CPU'
  scaling = ' with loss scaling' if dtype == tf.float16 else ''
  print(f'Logdir {logdir}')
  print(f'Precision {config.precision}: {dtype.name} on {device}{scaling} · '
        f'tf.function {"on" if config.jit else "off"}'
        f'{" · XLA" if config.xla else ""}')
  warning = gpu_warning(device)
  if warning:
    print(warning, file=sys.stderr)
  from common import tfutils
  if not tfutils.is_chief(strategy):
    if not task:
      raise ConfigError(
          'multi_worker training needs a task (train.py), not api.train')
    worker_loop(config, logdir)
    return

  with ignore_sigint():  # Env processes inherit it: Ctrl-C is ours to handle.
    train_envs, eval_envs = make_envs()
  stop = threading.Event()
  handlers = utils.install_stop_handler(
      stop, '\nStopping after the current step and saving the checkpoint '
      '(Ctrl-C again quits without saving).')
  try:
    train_loop(config, logdir, train_envs, eval_envs, outputs, stop, task)
  finally:
    for env in train_envs + eval_envs:
      try:
        env.close()
      except Exception as e:
        print(f'Closing an env failed: {e}', file=sys.stderr)
    utils.restore_handlers(handlers)


def make_strategy(config):
  """config.distribute's strategy (None for none), with the batch checked
  against its replicas; ConfigError naming the problem."""
  from common import tfutils
  try:
    strategy = tfutils.strategy(**config.distribute)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  if strategy is None:
    return None
  replicas, batch = strategy.num_replicas_in_sync, config.dataset.batch
  if batch % replicas:
    raise ConfigError(
        f'dataset.batch {batch} does not divide among the {replicas} replicas '
        f'of distribute.strategy {config.distribute.strategy}: use a multiple '
        f'of {replicas}')
  devices = ', '.join(strategy.extended.worker_devices)
  print(f'Distribute {config.distribute.strategy}: {replicas} replicas '
        f'(this process: {devices}), batch {batch} = {batch // replicas} '
        'per replica')
  return strategy


def worker_loop(config, logdir):
  """A multi-worker process that is not the chief: it only trains, on
  batches from the chief's train_episodes (a filesystem both see), in step
  with the chief's updates, until the chief's last one."""
  env = make_env(config, 'train', config.seed)
  obs_space, act_space = env.obs_space, env.act_space
  env.close()
  agent = build_agent(config, obs_space, act_space)
  agent.sync()  # The chief's weights, as it restored them.
  directory = logdir / 'train_episodes'
  print(f'Worker: waiting for episodes in {directory}.', flush=True)
  while not any(directory.glob('*.npz')):
    time.sleep(1)
  replay = replay_lib.Replay(
      directory, seed=config.seed + 1, watch=True, **config.replay)
  while not replay.stats['loaded_episodes']:
    time.sleep(1)
    replay.refresh()
  dataset = agent.dataset(
      lambda batch: replay.dataset(batch, config.dataset.length))
  updates = 0
  while not agent.stopped:
    agent.train(next(dataset))
    updates += 1
  print(f'Worker: the chief made its last update; {updates} updates here.')


def train_loop(config, logdir, train_envs, eval_envs, outputs, stop, task=True):
  """Prefill, pretrain, then act, store and train; evaluate and save every
  eval_every steps. Returns when done or after `stop` is set."""
  training = Training(
      config, logdir, train_envs, eval_envs, outputs, stop, task)
  try:
    training.prefill()
    training.pretrain()
    while int(training.step) < config.steps:
      training.evaluate()
      # Phases end at multiples of eval_every, also after a resume.
      until = (int(training.step) // config.eval_every + 1) * config.eval_every
      training.train(min(until, config.steps))
      training.save(snapshot=True)
      if int(training.step) >= config.steps:
        training.evaluate()  # The curve ends with the final policy's score.
    training.keep_ongoing()
    training.release_workers()
    training.logger.write()
    print(f'Finished {int(training.step)} steps; '
          f'checkpoint {training.checkpoint}.')
  except Stopped:
    training.shutdown()
  except Exception as error:
    if not (isinstance(error, envs_lib.EnvCrashed)
            or getattr(error, 'env', None)):
      raise
    # An env failed: end cleanly, with the episodes and the checkpoint kept.
    training.shutdown()
    raise EnvFailed(error) from error


class EnvFailed(Exception):
  """An env's error or death, after the run was saved: one line for users."""

  def __init__(self, error):
    self.error = error
    notes = ''.join(getattr(error, '__notes__', []))
    self.traceback = notes
    name = getattr(error, 'env', None)
    text = (str(error) if name is None
            else f'{name} failed: {type(error).__name__}: {error}')
    super().__init__(text)


class Training:
  """One run's parts, wired once: the agent with its checkpoint, the train
  and eval replays, the drivers, the step counter and the logger. The loop
  (train_loop) calls its phases: prefill, pretrain, evaluate, train, save;
  shutdown after a stop."""

  def __init__(self, config, logdir, train_envs, eval_envs, outputs, stop,
               task=True):
    self.config, self.logdir, self.stop = config, logdir, stop
    self.checkpoint = logdir / CHECKPOINT
    # The agent first: a checkpoint of other model sizes stops the run before
    # the config is saved over the old one and before any env step.
    self.act_space = train_envs[0].act_space
    self.agent = build_agent(config, train_envs[0].obs_space, self.act_space)
    # Anything to save on exit.
    self.trained = restore(self.agent, logdir, config)
    self.agent.sync()  # Multi-worker: the workers take these weights.
    config.save(logdir / 'config.yaml')
    save_spaces(logdir, train_envs[0].obs_space, self.act_space, task)
    count = lambda variables: sum(int(np.prod(v.shape)) for v in variables)
    print(f'Agent: {count(self.agent.trainable_variables) / 1e6:.2f}M '
          'parameters (world model '
          f'{count(self.agent.wm.trainable_variables) / 1e6:.2f}M)')

    self.train_replay = replay_lib.Replay(
        logdir / 'train_episodes', seed=config.seed, **config.replay)
    self.eval_replay = replay_lib.Replay(
        logdir / 'eval_episodes', capacity=config.replay.capacity // 100,
        minlen=config.dataset.length, maxlen=config.dataset.length)
    # Agent steps.
    self.step = utils.Counter(self.train_replay.stats['total_steps'])
    if outputs is None:
      # The replay's counts go to the files only; the progress line stays short.
      hide_counts = r'^(?!(train|eval)_(total|loaded)_(steps|episodes)$)'
      outputs = [
          logger_lib.TerminalOutput(
              config.steps * config.action_repeat, hide_counts),
          logger_lib.JSONLOutput(logdir),
          logger_lib.TensorBoardOutput(logdir)]
    self.logger = logger_lib.Logger(
        self.step, outputs, multiplier=config.action_repeat)
    print(f'Train replay: {self.train_replay.stats["total_episodes"]} '
          f'episodes, {int(self.step)} steps stored.')

    self.should_train = utils.Every(config.train_every)
    self.should_log = utils.Every(config.log_every)
    self.should_video = {
        'train': utils.Every(config.log_every),
        'eval': utils.Every(config.eval_every)}
    self.should_explore = utils.Until(config.expl_until // config.action_repeat)
    # Open-loop videos have 5 context steps.
    self.can_report = config.dataset.length > 5
    self.metrics = collections.defaultdict(list)
    self.train_dataset = self.eval_dataset = self.report_dataset = None
    self.prefilling = False  # Random actions: no updates, no logs.

    self.train_driver = driver_lib.Driver(train_envs)
    self.train_driver.on_step(lambda transition, worker: self.step.increment())
    # The replay saves an episode at its last step.
    self.train_driver.on_step(self.train_replay.add_step)
    self.train_driver.on_reset(self.train_replay.add_step)
    self.train_driver.on_episode(
        lambda episode, worker: self.log_episode(episode, 'train'))
    self.train_driver.on_step(self.check_stop)
    self.train_driver.on_step(self.train_step)
    self.eval_driver = driver_lib.Driver(eval_envs)
    self.eval_driver.on_episode(self.store_eval_episode)
    self.eval_driver.on_episode(
        lambda episode, worker: self.log_episode(episode, 'eval'))
    self.eval_driver.on_step(self.check_stop)
    self.has_eval = bool(eval_envs)

  # Phases ---------------------------------------------------------------------

  def prefill(self):
    """Random actions until the replay holds config.prefill steps (and at
    least one finished episode); then one random-policy eval episode."""
    config = self.config
    prefill = max(0, config.prefill - int(self.step))
    if prefill:
      print(f'Prefill the replay with a random policy ({prefill} steps).')
      random_policy = make_random_policy(self.act_space['action'], config.seed)
      # The episode in progress then continues with the agent (no reset), so
      # the replay never joins two episodes into one.
      self.prefilling = True
      self.train_driver(random_policy, steps=prefill, episodes=1)
      self.prefilling = False
      if self.has_eval:
        # As the published release: one random-policy evaluation episode, so
        # the curve starts at the prefill step and the eval replay has an
        # episode for the first open-loop video.
        print('Evaluate the random policy (1 episode).')
        self.eval_driver(make_random_policy(
            self.act_space['action'], config.seed + 1000), episodes=1)
        self.eval_driver.reset()
    if not self.train_replay.stats['loaded_episodes']:
      raise ConfigError(
          f'the train replay holds no episode of at least replay.minlen = '
          f'{config.replay.minlen} steps to learn from: lower --replay.minlen '
          f'or raise --prefill')

  def pretrain(self):
    """config.pretrain + 1 updates, only when no checkpoint was restored: as
    the original, whose first update (it builds the variables) comes before
    its `pretrain` loop."""
    if self.trained:
      return
    updates = self.config.pretrain + 1
    print(f'Pretrain the agent ({updates} updates: 1 + pretrain '
          f'{self.config.pretrain}).')
    for _ in range(updates):
      self.agent.train(next(self.dataset()), step=int(self.step))
    self.trained = True

  def evaluate(self):
    """The open-loop video of an eval batch, then eval_eps episodes of the
    eval policy, from fresh env episodes."""
    self.logger.write()
    if not self.has_eval:
      return
    print('Start evaluation.')
    if self.can_report and self.eval_replay.stats['loaded_episodes']:
      if self.eval_dataset is None:
        self.eval_dataset = iter(
            self.eval_replay.dataset(**self.config.dataset))
      self.logger.add(self.agent.report(next(self.eval_dataset)), prefix='eval')
    self.eval_driver.reset()
    self.eval_driver(self.eval_policy, episodes=self.config.eval_eps)

  def train(self, until):
    """Acts, stores and trains (every train_every steps) until step `until`."""
    self.logger.write()
    print('Start training.')
    self.train_driver(self.train_policy, steps=until - int(self.step))

  def save(self, snapshot=False):
    """The checkpoint; with `snapshot`, also checkpoints/variables-<frames>.pkl,
    keeping the newest config.checkpoints.keep of those."""
    self.agent.tfstep.assign(int(self.step))  # The checkpoint knows its step.
    save(self.agent, self.logdir, int(self.step) * self.config.action_repeat,
         self.config.checkpoints.keep if snapshot else 0)

  def release_workers(self):
    """Multi-worker: one last update that tells the workers to stop (they
    wait for the chief's updates otherwise); then the checkpoint."""
    if not self.trained or self.config.distribute.strategy != 'multi_worker':
      return
    self.agent.train(next(self.dataset()), step=int(self.step), stop=True)
    self.save()

  def keep_ongoing(self):
    """Store the train episodes in progress as they are (without is_last):
    a resumed run counts its step from the stored steps, so they must equal
    the steps taken, at a stop and at the end (a rerun of a finished run
    then has nothing to do)."""
    kept = self.train_replay.save_ongoing()
    if kept:
      print(f'Kept {kept} steps of the episodes in progress.')

  def shutdown(self):
    """After a stop: keep the episodes in progress and save the
    checkpoint."""
    self.logger.write()
    self.keep_ongoing()
    if self.trained:
      self.release_workers()
      self.save()
      print(f'Stopped at step {int(self.step)}: saved checkpoint '
            f'{self.checkpoint}. Run the same command to resume.')
    else:
      print(f'Stopped at step {int(self.step)} before training; the episodes '
            f'are kept in {self.logdir / "train_episodes"}.')

  # Callbacks and policies -----------------------------------------------------

  def dataset(self):
    if self.train_dataset is None:
      length = self.config.dataset.length
      self.train_dataset = self.agent.dataset(
          lambda batch: self.train_replay.dataset(batch, length))
    return self.train_dataset

  def report_batch(self):
    """A batch for the open-loop video: the training stream's next, or,
    distributed, one of its own (a distributed iterator's next is a
    collective step that every worker must take)."""
    if not self.agent.strategy:
      return next(self.dataset())
    if self.report_dataset is None:
      self.report_dataset = iter(
          self.train_replay.dataset(**self.config.dataset))
    return next(self.report_dataset)

  def train_policy(self, obs, state):
    mode = 'explore' if self.should_explore(self.step) else 'train'
    return self.agent.policy(obs, state, mode)

  def eval_policy(self, obs, state):
    return self.agent.policy(obs, state, 'eval')

  def train_step(self, transition, worker):
    if self.prefilling:
      return
    step = self.step
    if self.should_train(step):
      for _ in range(self.config.train_steps):
        # Schedules read the agent step.
        batch = next(self.dataset())
        for name, value in self.agent.train(batch, step=int(step)).items():
          self.metrics[name].append(float(value))
    if self.should_log(step):
      self.logger.add({name: np.mean(values)
                       for name, values in self.metrics.items()})
      self.metrics.clear()
      if self.can_report:
        self.logger.add(self.agent.report(self.report_batch()), prefix='train')
      self.logger.add(self.train_replay.stats, prefix='train')
      self.logger.write(fps=True)

  def log_episode(self, episode, mode):
    config, logger = self.config, self.logger
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
    if self.should_video[mode](self.step):
      for key in config.log_keys_video:
        if key in episode:
          # The first 500 frames: an Atari episode of 27k frames is a huge GIF.
          logger.video(f'{mode}_policy_{key}', episode[key][:500])
    replay = {'train': self.train_replay, 'eval': self.eval_replay}[mode]
    logger.add(replay.stats, prefix=mode)
    logger.write()

  def store_eval_episode(self, episode, worker):
    # Eval episodes only feed the open-loop videos, which need dataset.length.
    if len(episode['action']) - 1 >= self.config.dataset.length:
      self.eval_replay.add_episode(episode)

  def check_stop(self, transition, worker):
    if self.stop.is_set():
      raise Stopped()


# The agent and its checkpoints ------------------------------------------------


def save_spaces(logdir, obs_space, act_space, task):
  """logdir/spaces.pkl: the spaces the agent was built for, so that a run can
  be loaded without its env (api.load); `task` False for api.train's env."""
  spaces = {'obs_space': obs_space, 'act_space': act_space, 'task': task}
  utils.atomic_write(
      pathlib.Path(logdir) / SPACES, lambda f: pickle.dump(spaces, f))


def load_run(logdir):
  """(config, spaces) of a run's logdir, without TensorFlow; ConfigError
  naming what is missing."""
  logdir = pathlib.Path(logdir).expanduser()
  if not (logdir / 'config.yaml').is_file():
    raise ConfigError(
        f'{logdir} holds no config.yaml: is it the logdir of a run?')
  try:
    config = config_lib.Config.load(logdir / 'config.yaml')
    config = config_lib.Config(
        config_lib.load_configs()['defaults']).update(config.flat)
  except (OSError, ValueError, KeyError) as e:
    raise ConfigError(f'cannot read {logdir / "config.yaml"}: {e}') from None
  config = config.update({'logdir': str(logdir)})
  spaces = None
  if (logdir / SPACES).is_file():
    with open(logdir / SPACES, 'rb') as f:
      spaces = pickle.load(f)
  return config, spaces


def find_checkpoint(logdir, checkpoint=None):
  """The checkpoint to load: `checkpoint` if given, else logdir/variables.pkl,
  else the newest snapshot. ConfigError if there is none."""
  logdir = pathlib.Path(logdir).expanduser()
  if checkpoint:
    path = pathlib.Path(checkpoint).expanduser()
    if not path.is_file():
      raise ConfigError(f'checkpoint {path} is not a file')
    return path
  if (logdir / CHECKPOINT).is_file():
    return logdir / CHECKPOINT
  kept = snapshots(logdir)
  if kept:
    return kept[0][1]
  raise ConfigError(
      f'{logdir} holds no checkpoint ({CHECKPOINT} or {SNAPSHOTS}/): the run '
      f'saves one after its first training phase or when stopped')


def checkpoint_step(path):
  """The agent step a checkpoint was saved at (its `tfstep`), without TF;
  ConfigError if the file cannot be read."""
  try:
    values = utils.read_checkpoint(path)
  except utils.CheckpointUnreadable as e:
    raise ConfigError(str(e)) from None
  return int(values.get('tfstep', 0))


def build_agent(config, obs_space, act_space):
  """The agent of `config` for these spaces; ConfigError if it cannot be."""
  from dreamerv2 import agent as agent_lib
  try:
    return agent_lib.Agent(config, obs_space, act_space)
  except ValueError as e:
    raise ConfigError(f'cannot build the agent from this config: {e}') from None


def snapshots(logdir):
  """The kept checkpoints of a logdir, newest first: [(frames, path)]."""
  found = []
  for path in (pathlib.Path(logdir) / SNAPSHOTS).glob('variables-*.pkl'):
    try:
      found.append((int(path.stem.split('-', 1)[1]), path))
    except ValueError:
      pass
  return sorted(found, reverse=True)


def save(agent, logdir, frames, keep):
  """Writes logdir/variables.pkl; with keep > 0 also a snapshot
  checkpoints/variables-<frames>.pkl, then removes all but the newest `keep`
  snapshots. Every write is atomic (common.utils.atomic_write)."""
  from common import tfutils
  path = pathlib.Path(logdir) / CHECKPOINT
  tfutils.save_checkpoint(agent, path)
  if keep <= 0:
    return
  folder = pathlib.Path(logdir) / SNAPSHOTS
  folder.mkdir(exist_ok=True)
  with open(path, 'rb') as source:
    utils.atomic_write(
        folder / f'variables-{frames}.pkl',
        lambda f: shutil.copyfileobj(source, f, 1 << 24),
        size=path.stat().st_size)
  for _, old in snapshots(logdir)[keep:]:
    old.unlink(missing_ok=True)


def restore(agent, logdir, config):
  """Loads logdir's checkpoint into the agent (falling back to the newest
  readable snapshot when it is damaged), or else warm-starts from
  config.warm_start.checkpoint. Returns whether the logdir had a checkpoint.
  ConfigError when none is readable or a checkpoint does not fit."""
  from common import tfutils
  logdir = pathlib.Path(logdir)
  latest = logdir / CHECKPOINT
  candidates = ([latest] if latest.exists() else []) + [
      path for _, path in snapshots(logdir)]
  damaged = []
  for path in candidates:
    try:
      tfutils.load_checkpoint(agent, path)
    except tfutils.CheckpointUnreadable as e:
      damaged.append(f'{path} ({e})')
      continue
    except tfutils.CheckpointMismatch as e:
      changes = saved_config_changes(logdir / 'config.yaml', config)
      hint = f' (config changes: {", ".join(changes)})' if changes else ''
      raise ConfigError(f'{e}{hint}') from None
    if damaged:
      print(f'Warning: the checkpoint {damaged[0]} is damaged; resuming from '
            f'{path}, the newest readable one.', file=sys.stderr)
    return True
  if damaged:
    raise ConfigError(
        f'no readable checkpoint in {logdir}: {"; ".join(damaged)}. Nothing '
        f'was changed; move the damaged files away to start over')
  warm = config.warm_start
  if warm.checkpoint:
    path = pathlib.Path(warm.checkpoint).expanduser()
    select = None if warm.only == 'all' else (
        lambda name: name.startswith('wm/') and '_opt/' not in name)
    try:
      tfutils.load_checkpoint(agent, path, select)
    except (tfutils.CheckpointUnreadable, tfutils.CheckpointMismatch) as e:
      raise ConfigError(f'--warm_start.checkpoint: {e}') from None
    print(f'Warm start from {path} ({warm.only}).')
  return False


def gpu_warning(device):
  """A warning when nvidia-smi lists a GPU but TensorFlow runs on the CPU."""
  if device == 'GPU':
    return None
  try:
    listed = subprocess.run(['nvidia-smi', '-L'], capture_output=True,
                            text=True, timeout=10).stdout
  except (OSError, subprocess.SubprocessError):
    return None
  gpus = [line for line in listed.splitlines() if line.startswith('GPU')]
  if not gpus:
    return None
  import tensorflow as tf
  return (f'Warning: nvidia-smi lists {len(gpus)} GPU(s) ({gpus[0]}), but '
          f'TensorFlow sees none and runs on the CPU: install its CUDA build, '
          f'pip install "tensorflow[and-cuda]=={tf.__version__}" (make venv '
          f'does on such machines).')


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
  return [f'{key}: {old} -> {new}'
          for key, old, new in config_lib.diff(saved, config)]


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
