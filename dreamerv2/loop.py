"""The training loop of DreamerV2, shared by train.py and api.train.

  run(config, make_envs)  seeds, builds the strategy, the envs and the parts
                          of the run, then the loop:
    prefill               random actions until the replay holds `prefill`
                          steps, then one random-policy eval episode
    pretrain              pretrain + 1 updates, on a fresh run only
    repeat until `steps`: evaluate (open-loop video, eval_eps episodes),
                          act and train for eval_every steps, save

`Training` holds the run's parts, wired once: the agent and its learner, the
replays, the drivers with their callbacks, the step counter and the logger.
"""

import collections
import contextlib
import pathlib
import random
import re
import sys
import threading

import numpy as np

from common import driver as driver_lib
from common import envs as envs_lib
from common import logger as logger_lib
from common import replay as replay_lib
from common import rundir
from common import utils
from common.config import ConfigError
from dreamerv2 import build
from dreamerv2 import distribute


class Stopped(Exception):
  """Raised inside the loop after Ctrl-C (SIGINT) or SIGTERM."""


def run(config, make_envs, outputs=None, envs_of_task=True):
  """Trains until the step counter reaches config.steps agent steps; it starts
  at the steps stored in the run's train episodes, so a second run resumes.

  make_envs() -> (train envs, eval envs): lists of interface envs (see
  common/envs.py); with no eval envs there is no evaluation. outputs are the
  logger's outputs (default: terminal, metrics.jsonl, TensorBoard). The envs
  are closed when this returns. Raises ConfigError when the agent cannot be
  built from the config or the checkpoint does not fit it. envs_of_task:
  whether the envs are config.task's (False for api.train's own env).
  """
  logdir = pathlib.Path(config.logdir).expanduser()
  # One writer per logdir: a multi-worker run's chief holds it, its workers
  # never write there.
  with (rundir.Lock(logdir) if distribute.is_chief(config)
        else contextlib.nullcontext()):
    _run(config, logdir, make_envs, outputs, envs_of_task)


def _run(config, logdir, make_envs, outputs, envs_of_task):
  changes = rundir.config_changes(logdir, config)
  if changes:
    print('Resuming with overrides that differ from the saved config:\n  '
          + '\n  '.join(changes))
  import tensorflow as tf
  random.seed(config.seed)
  np.random.seed(config.seed)
  tf.random.set_seed(config.seed)
  if config.deterministic:  # README, "Around a run".
    tf.config.experimental.enable_op_determinism()
  for gpu in tf.config.list_physical_devices('GPU'):
    tf.config.experimental.set_memory_growth(gpu, True)
  strategy = distribute.make_strategy(config)  # Before TensorFlow runs.
  print(f'Logdir {logdir}')
  build.describe_compute(config)
  if not distribute.is_chief(config):
    if not envs_of_task:
      raise ConfigError(
          'multi_worker training needs a task (train.py), not api.train')
    learner = build.agent(config, *build.task_spaces(config), strategy)
    distribute.work(learner, config, logdir / rundir.TRAIN_EPISODES)
    return
  with utils.ignore_sigint():  # Env processes inherit it: Ctrl-C is ours.
    train_envs, eval_envs = make_envs()
  stop = threading.Event()
  handlers = utils.install_stop_handler(
      stop, '\nStopping after the current step and saving the checkpoint '
      '(Ctrl-C again quits without saving).')
  try:
    train_loop(config, logdir, train_envs, eval_envs, outputs, stop,
               strategy, envs_of_task)
  finally:
    for env in train_envs + eval_envs:
      try:
        env.close()
      except Exception as e:
        print(f'Closing an env failed: {e}', file=sys.stderr)
    utils.restore_handlers(handlers)


def train_loop(config, logdir, train_envs, eval_envs, outputs, stop,
               strategy=None, envs_of_task=True):
  """Prefill, pretrain, then act, store and train; evaluate and save every
  eval_every steps. Returns when done or after `stop` is set."""
  training = Training(config, logdir, train_envs, eval_envs, outputs, stop,
                      strategy, envs_of_task)
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
  except distribute.PeerLost:
    training.shutdown(release=False)  # No collective can run any more.
    raise
  except Exception as error:
    if not (isinstance(error, envs_lib.EnvCrashed)
            or getattr(error, 'env', None)):
      raise
    # An env failed: end cleanly, with the episodes and the checkpoint kept.
    training.shutdown()
    raise build.EnvFailed(error) from error
  finally:
    for output in training.outputs:  # The trackers end their runs.
      if hasattr(output, 'close'):
        output.close()


class Training:
  """One run's parts, wired once: the agent with its checkpoint, the train
  and eval replays, the drivers, the step counter and the logger. The loop
  (train_loop) calls its phases: prefill, pretrain, evaluate, train, save;
  shutdown after a stop."""

  def __init__(self, config, logdir, train_envs, eval_envs, outputs, stop,
               strategy=None, envs_of_task=True):
    self.config, self.logdir, self.stop = config, logdir, stop
    self.checkpoint = logdir / rundir.CHECKPOINT
    # The agent first: a checkpoint of other model sizes stops the run before
    # the config is saved over the old one and before any env step.
    self.act_space = train_envs[0].act_space
    self.learner = build.agent(
        config, train_envs[0].obs_space, self.act_space, strategy)
    self.agent = self.learner.agent
    # Whether the weights are worth saving: restored, or pretrained below.
    self.has_weights = rundir.restore(self.agent, logdir, config)
    self.learner.sync()  # Multi-worker: the workers take these weights.
    rundir.save_config(logdir, config)
    rundir.save_spaces(
        logdir, train_envs[0].obs_space, self.act_space, envs_of_task)
    count = lambda module: sum(
        int(np.prod(v.shape)) for v in module.trainable_variables) / 1e6
    print(f'Agent: {count(self.agent):.2f}M parameters (world model '
          f'{count(self.agent.wm):.2f}M)')

    warning = build.replay_memory_warning(
        train_envs[0].obs_space, self.act_space, config.replay.capacity)
    if warning:
      print(warning, file=sys.stderr)
    self.train_replay = replay_lib.Replay(
        logdir / rundir.TRAIN_EPISODES, seed=config.seed, **config.replay)
    self.eval_replay = replay_lib.Replay(
        logdir / rundir.EVAL_EPISODES,
        capacity=config.replay.capacity // build.EVAL_REPLAY_DIVISOR,
        minlen=config.dataset.length, maxlen=config.dataset.length)
    self.step = utils.Counter(self.train_replay.stats['total_steps'])  # Agent.
    self.outputs = build.outputs(config, logdir) if outputs is None else outputs
    self.logger = logger_lib.Logger(
        self.step, self.outputs, multiplier=config.action_repeat)
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
    self.ahead = 0 if config.deterministic else 4  # Batches sampled ahead.
    self.prefilling = False  # Random actions: no updates, no logs.
    self.has_eval = bool(eval_envs)

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

  # Phases ---------------------------------------------------------------------

  def prefill(self):
    """Random actions until the replay holds config.prefill steps (and at
    least one finished episode); then one random-policy eval episode."""
    config = self.config
    prefill = max(0, config.prefill - int(self.step))
    if prefill:
      print(f'Prefill the replay with a random policy ({prefill} steps).')
      random_policy = build.random_policy(self.act_space['action'], config.seed)
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
        self.eval_driver(build.random_policy(
            self.act_space['action'], config.seed + build.EVAL_SEED),
            episodes=1)
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
    if self.has_weights:
      return
    updates = self.config.pretrain + 1
    print(f'Pretrain the agent ({updates} updates: 1 + pretrain '
          f'{self.config.pretrain}).')
    for _ in range(updates):
      self.check_stop(None, None)  # Ctrl-C between updates, not after all.
      self.learner.train(next(self.dataset()), step=int(self.step))
    self.has_weights = True

  def evaluate(self):
    """The open-loop video of an eval batch, then eval_eps episodes of the
    eval policy, from fresh env episodes."""
    self.logger.write()
    if not self.has_eval:
      return
    print('Start evaluation.')
    if self.can_report and self.eval_replay.stats['loaded_episodes']:
      self.eval_dataset = self.eval_dataset or self.batches(self.eval_replay)
      self.logger.add(
          self.agent.report(next(self.eval_dataset)), prefix='eval')
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
    rundir.save(
        self.agent, self.logdir, int(self.step) * self.config.action_repeat,
        self.config.checkpoints.keep if snapshot else 0)

  def release_workers(self):
    """Multi-worker: one last update that tells the workers to stop (they
    wait for the chief's updates otherwise); then the checkpoint."""
    if (not self.has_weights
        or self.config.distribute.strategy != 'multi_worker'):
      return
    self.learner.train(next(self.dataset()), step=int(self.step), stop=True)
    self.save()

  def keep_ongoing(self):
    """Store the train episodes in progress as they are (without is_last):
    a resumed run counts its step from the stored steps, so they must equal
    the steps taken, at a stop and at the end (a rerun of a finished run
    then has nothing to do)."""
    kept = self.train_replay.save_ongoing()
    if kept:
      print(f'Kept {kept} steps of the episodes in progress.')

  def shutdown(self, release=True):
    """After a stop: keep the episodes in progress and save the checkpoint
    (multi-worker: after releasing the workers, unless one is gone)."""
    self.logger.write()
    self.keep_ongoing()
    if self.has_weights:
      if release:
        self.release_workers()
      self.save()
      print(f'Stopped at step {int(self.step)}: saved checkpoint '
            f'{self.checkpoint}. Run the same command to resume.')
    else:
      print(f'Stopped at step {int(self.step)} before training; the episodes '
            f'are kept in {self.logdir / rundir.TRAIN_EPISODES}.')

  # Callbacks and policies -----------------------------------------------------

  def dataset(self):
    if self.train_dataset is None:
      length = self.config.dataset.length
      self.train_dataset = self.learner.dataset(
          lambda size: self.train_replay.dataset(size, length, self.ahead),
          self.config.dataset.batch)
    return self.train_dataset

  def report_batch(self):
    """A batch for the open-loop video: the training stream's next, or,
    distributed, one of its own (a distributed iterator's next is a
    collective step that every worker must take)."""
    if self.learner.strategy is None:
      return next(self.dataset())
    self.report_dataset = (
        self.report_dataset or self.batches(self.train_replay))
    return next(self.report_dataset)

  def batches(self, replay):
    """An iterator of batches of `replay` on this process only."""
    return iter(replay.dataset(**self.config.dataset, prefetch=self.ahead))

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
        for name, value in self.learner.train(batch, step=int(step)).items():
          self.metrics[name].append(float(value))
    if self.should_log(step):
      self.logger.add({name: np.mean(values)
                       for name, values in self.metrics.items()})
      self.metrics.clear()
      if self.can_report:
        self.logger.add(
            self.learner.report(self.report_batch()), prefix='train')
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


