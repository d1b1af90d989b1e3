"""Data parallelism (config.distribute): the strategy, the check that the
batch divides among its replicas, the replica side of the update, and the
loop of a multi-worker process that is not the chief.

The agent does not know about replicas. `Learner` builds it inside the
strategy's scope (its variables are then mirrored) and runs its update on
every replica's part of the batch; without a strategy it calls the agent
directly. docs/scaling.md says what each strategy does. No TensorFlow at
import: the config checks run before it loads.
"""

import contextlib
import json
import os
import time

from common import errors
from common.config import ConfigError

# A worker samples the chief's episodes with a replay seed of its own.
REPLAY_SEED = 1


def check_batch(batch, replicas, kind):
  """ConfigError unless the global batch divides among the replicas."""
  if replicas and batch % replicas:
    raise ConfigError(
        f'dataset.batch {batch} does not divide among the {replicas} replicas '
        f'of distribute.strategy {kind}: use a multiple of {replicas}')


def check_config(config):
  """ConfigError for a distribute setting that cannot work, where that is
  known without TensorFlow (the GPUs are counted once it loads)."""
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
  check_batch(config.dataset.batch, replicas, kind)


def is_chief(config):
  """Whether this process is the chief, the one that acts, logs, saves and
  holds the logdir (without TensorFlow): every process but a multi-worker
  run's other workers."""
  if config.distribute.strategy != 'multi_worker':
    return True
  tf_config = json.loads(os.environ.get('TF_CONFIG', '{}'))
  task = tf_config.get('task', {})
  return _chief_task(task.get('type'), int(task.get('index', 0)),
                     tf_config.get('cluster', {}))


def _chief_task(kind, index, cluster):
  """TF_CONFIG's rule: the chief is task `chief`, or worker 0 when the
  cluster names no chief."""
  return kind in (None, 'chief') or (
      kind == 'worker' and index == 0 and not cluster.get('chief'))


def make_strategy(config):
  """config.distribute's strategy (None for none), with the batch checked
  against its replicas. Call it before anything else runs in TensorFlow."""
  from common import tfutils
  try:
    strategy = tfutils.strategy(**config.distribute)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  if strategy is None:
    return None
  replicas, batch = strategy.num_replicas_in_sync, config.dataset.batch
  check_batch(batch, replicas, config.distribute.strategy)
  devices = ', '.join(strategy.extended.worker_devices)
  print(f'Distribute {config.distribute.strategy}: {replicas} replicas '
        f'(this process: {devices}), batch {batch} = {batch // replicas} '
        'per replica')
  return strategy


class PeerLost(errors.RunEnded):
  """Multi-worker: another process of the cluster died or stopped answering;
  one line naming it."""


def _peer_lost(error):
  """PeerLost naming the process of TF_CONFIG that `error` (a collective
  aborted by TensorFlow's health check or a broken connection) points to.

  It also clears the locals of the frames the error unwound. TensorFlow's
  eager all-reduce (a distributed iterator's next) maps over a
  multiprocessing ThreadPool and closes it only when the map returns; after
  a failed one, the pool stays referenced from those frames, in a reference
  cycle with the error, until the interpreter's last collection at exit,
  where its __del__ writes to a pipe already closed and prints a traceback
  after our one line. Cleared here, the pool is freed and closed now.
  """
  import re
  import traceback
  traceback.clear_frames(error.__traceback__)
  task = json.loads(os.environ.get('TF_CONFIG', '{}')).get('task', {})
  own = (task.get('type'), int(task.get('index', 0)))
  # The message names this process's own device too: the peer is another.
  peers = [(kind, int(index)) for kind, index in re.findall(
      r'/job:(\w+)/replica:\d+/task:(\d+)', str(error))]
  peers = [peer for peer in peers if peer != own]
  if not peers:
    return PeerLost(
        f'a process of the cluster is gone ({type(error).__name__})')
  return _lost(*peers[0])


def _lost(kind, index, why=''):
  """PeerLost naming TF_CONFIG's process `kind` `index` (chief or not),
  with `why` it is known to be gone, if given."""
  cluster = json.loads(os.environ.get('TF_CONFIG', '{}')).get('cluster', {})
  addresses = cluster.get(kind, [])
  where = f' at {addresses[index]}' if index < len(addresses) else ''
  why = f' ({why})' if why else ''
  if _chief_task(kind, index, cluster):
    return PeerLost(
        f'the chief ({kind} {index}{where}) of the cluster is gone{why}; run '
        f'the same commands on every host to resume from its last checkpoint')
  return PeerLost(
      f'{kind} {index}{where} of the cluster is gone{why}; the chief saved '
      f'the run: run the same commands on every host to resume')


class Learner:
  """Runs the agent's update: on one device, or on every replica of
  `strategy` (each on its part of the batch, gradients averaged).

  learner.agent is the agent (policy, weights); train, dataset, report and
  sync take the strategy into account. `stopped` turns True on every
  multi-worker process after the chief's last update (train(stop=True)).
  """

  def __init__(self, make_agent, strategy=None):
    import tensorflow as tf
    self.strategy = strategy
    self.stopped = False
    if strategy is None:
      self.agent = make_agent()
      return
    with strategy.scope():
      self.agent = make_agent()
    self._replicated = tf.function(self._replicated, autograph=False)

  def train(self, data, step=None, stop=False):
    """One update on a batch (distributed: what `dataset` yields). step: the
    agent step the schedules read. stop: multi-worker, the chief's last."""
    import tensorflow as tf
    if self.strategy is None:
      return self.agent.train(data, step)
    step = int(self.agent.tfstep.numpy()) if step is None else step
    with self._peers():
      metrics, stopped = self._replicated(
          data, tf.constant(step, tf.int64), tf.constant(int(stop), tf.int64))
      self.stopped = bool(stopped)
    return metrics

  @contextlib.contextmanager
  def _peers(self):
    """Multi-worker: a collective that failed because a peer is gone (its
    connection broke, or TensorFlow's health check aborted the collectives)
    raises PeerLost instead."""
    import tensorflow as tf
    try:
      yield
    except (tf.errors.UnavailableError, tf.errors.DeadlineExceededError,
            tf.errors.AbortedError, tf.errors.CancelledError,
            tf.errors.InternalError) as error:
      multi = tf.distribute.MultiWorkerMirroredStrategy
      if not isinstance(self.strategy, multi):
        raise
      raise _peer_lost(error) from None

  def _replicated(self, data, step, stop):
    """The update on every replica; the step and stop flag are the first
    replica's (the chief's), and the metrics the mean over replicas."""
    import tensorflow as tf
    from common import nets
    from common import tfutils
    agent = self.agent

    def replica(data, step, stop):
      context = tf.distribute.get_replica_context()
      first = tf.cast(tf.equal(context.replica_id_in_sync_group, 0), tf.int64)
      shared = context.all_reduce(
          tf.distribute.ReduceOp.SUM, tf.stack([step, stop]) * first)
      tfutils.assign(agent.tfstep, shared[0])
      # Replicas may run in threads of their own: the dtype is per thread.
      with nets.compute_in(agent.dtype):
        return agent.update(data), shared[1]
    metrics, stopped = self.strategy.run(replica, args=(data, step, stop))
    mean = tf.distribute.ReduceOp.MEAN
    metrics = {k: self.strategy.reduce(mean, v, axis=None)
               for k, v in metrics.items()}
    return metrics, self.strategy.experimental_local_results(stopped)[0]

  def dataset(self, make, batch):
    """An iterator of batches for `train`. make(size) -> a tf.data.Dataset of
    batches [size, T, ...]; distributed, each replica draws batch / replicas
    sequences from its own pipeline."""
    if self.strategy is None:
      return iter(make(batch))
    return self._guarded(iter(self.strategy.distribute_datasets_from_function(
        lambda context: make(context.get_per_replica_batch_size(batch)))))

  def _guarded(self, batches):
    while True:  # A distributed iterator's next is a collective too.
      with self._peers():
        data = next(batches)
      yield data

  def report(self, data):
    """The agent's report of a batch; of a distributed batch, this host's
    first replica's part."""
    if self.strategy is not None:
      local = self.strategy.experimental_local_results
      data = ({k: local(v)[0] for k, v in data.items()}
              if isinstance(data, dict) else local(data)[0])
    return self.agent.report(data)

  def sync(self):
    """Multi-worker: every worker takes the chief's variables (after the
    chief restored a checkpoint); nothing otherwise. Every worker calls it;
    PeerLost if one is gone."""
    import tensorflow as tf
    from common import tfutils
    if not isinstance(self.strategy, tf.distribute.MultiWorkerMirroredStrategy):
      return
    variables = list(tfutils.named_variables(self.agent).values())

    @tf.function(autograph=False)
    def broadcast():
      def replica():
        context = tf.distribute.get_replica_context()
        first = tf.equal(context.replica_id_in_sync_group, 0)
        for var in variables:
          mine = tf.where(first, var.read_value(), tf.zeros_like(var))
          tfutils.assign(
              var, context.all_reduce(tf.distribute.ReduceOp.SUM, mine))
      self.strategy.run(replica)
    with self._peers():
      broadcast()


def work(learner, config, directory):
  """A multi-worker process that is not the chief: it only trains, on
  batches of the chief's train episodes in `directory` (on a filesystem both
  see; read, never written), in step with the chief's updates, until the
  chief's last one.

  While it waits for the chief's first episode it runs no collective, so
  TensorFlow's health check cannot end it: it watches the chief's lock in
  the logdir instead (rundir.Holder) and raises PeerLost when the chief is
  gone: at once on the chief's host, within max(peer_timeout, 3 heartbeats)
  from another.
  """
  from common import replay as replay_lib
  from common import rundir
  learner.sync()  # The chief's weights, as it restored them.
  chief = rundir.Holder(directory.parent, silent_after=max(
      config.distribute.peer_timeout, 3 * rundir.HEARTBEAT))

  def wait():
    gone = chief.gone()
    if gone:
      cluster = json.loads(os.environ['TF_CONFIG'])['cluster']
      raise _lost('chief' if cluster.get('chief') else 'worker', 0, gone)
    time.sleep(1)

  print(f'Worker: waiting for episodes in {directory}.', flush=True)
  while not any(directory.glob('*.npz')):
    wait()
  replay = replay_lib.Replay(
      directory, seed=config.seed + REPLAY_SEED, watch=True, **config.replay)
  while not replay.stats['loaded_episodes']:
    wait()
    replay.refresh()
  dataset = learner.dataset(
      lambda size: replay.dataset(size, config.dataset.length),
      config.dataset.batch)
  updates = 0
  while not learner.stopped:
    learner.train(next(dataset))
    updates += 1
  print(f'Worker: the chief made its last update; {updates} updates here.')
