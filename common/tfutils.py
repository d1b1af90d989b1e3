"""TensorFlow utilities: the optimizer, schedules, reward normalisation and
the checkpoint of a `tf.Module`."""

import pickle
import re

import numpy as np
import tensorflow as tf

from common import choices
from common import nets
from common import utils


class Optimizer(tf.Module):
  """Adam with global-norm clipping and decoupled weight decay.

  Slots are created with the optimizer, so a checkpoint holds them before the
  first update. A step whose gradient norm is not finite is skipped and
  counted. Under float16 compute the loss is scaled dynamically: halved after
  an overflow, doubled after 2000 finite steps (bfloat16 and float32 need no
  scaling; their reported scale is 1).

  As the original's Keras `LossScaleOptimizer` around Adam, every call counts
  as an iteration (`updates`, which Adam's bias correction reads) and applies
  the weight decay, whether its gradient step is applied or skipped.
  """

  # The optimized variables belong to their modules: not tracked here again.
  _TF_MODULE_IGNORED_PROPERTIES = (
      tf.Module._TF_MODULE_IGNORED_PROPERTIES | {'params'})

  def __init__(self, name, variables, lr, eps=1e-4, clip=None, wd=None,
               opt='adam', wd_pattern=r'.*', beta1=0.9, beta2=0.999):
    super().__init__(name=name)
    choices.check(f'{name}_opt.opt', opt, choices.OPTIMIZERS)
    self._name = name
    self.params = list(variables)
    self._lr, self._eps, self._clip, self._wd = lr, eps, clip, wd
    self._beta1, self._beta2 = beta1, beta2
    self._decay = [bool(wd) and bool(re.search(wd_pattern, f'{name}/{v.name}'))
                   for v in self.params]
    with tf.name_scope(name):
      self.m = [tf.Variable(tf.zeros_like(v), trainable=False)
                for v in self.params]
      self.v = [tf.Variable(tf.zeros_like(v), trainable=False)
                for v in self.params]
    self.updates = tf.Variable(0, dtype=tf.int64, trainable=False)
    self.skipped = tf.Variable(0, dtype=tf.int64, trainable=False)
    self._scaling = nets.compute_dtype() == tf.float16
    self.loss_scale = tf.Variable(
        2.0 ** 15 if self._scaling else 1.0, trainable=False)
    self.good_steps = tf.Variable(0, dtype=tf.int64, trainable=False)

  @property
  def size(self):
    return int(sum(np.prod(v.shape) for v in self.params))

  def __call__(self, tape, loss):
    """Applies the gradient of `loss` (a float32 scalar recorded on `tape`)."""
    loss = tf.cast(loss, tf.float32)
    scaled = loss
    if self._scaling:
      with tape:  # The scaling must be recorded for its gradient to exist.
        scaled = loss * self.loss_scale
    grads = tape.gradient(scaled, self.params)
    grads = [tf.zeros_like(v) if g is None else tf.cast(g, tf.float32)
             for g, v in zip(grads, self.params)]
    if self._scaling:
      grads = [g / self.loss_scale for g in grads]
    # Data parallel: every replica's gradient of its part of the batch,
    # averaged, so that each replica clips, checks and applies the same step.
    grads = all_reduce_mean(grads)
    norm = tf.linalg.global_norm(grads)
    finite = tf.math.is_finite(norm)
    if self._clip:
      grads, _ = tf.clip_by_global_norm(grads, self._clip, use_norm=norm)
    # Decoupled weight decay, before the gradient step and on every call.
    for var, decay in zip(self.params, self._decay):
      if decay:
        assign(var, var * (1 - self._wd))
    tf.cond(finite, lambda: self._apply(grads), lambda: self._skip())
    assign_add(self.updates, 1)
    if self._scaling:
      self._update_scale(finite)
    return {
        f'{self._name}_loss': loss,
        f'{self._name}_grad_norm': norm,
        f'{self._name}_loss_scale': tf.identity(self.loss_scale),
        f'{self._name}_skipped_steps': tf.cast(self.skipped, tf.float32),
    }

  def _apply(self, grads):
    step = tf.cast(self.updates + 1, tf.float32)
    beta1_power = tf.pow(self._beta1, step)
    beta2_power = tf.pow(self._beta2, step)
    for var, m, v, grad in zip(self.params, self.m, self.v, grads):
      tf.raw_ops.ResourceApplyAdam(
          var=var.handle, m=m.handle, v=v.handle,
          beta1_power=beta1_power, beta2_power=beta2_power,
          lr=tf.constant(self._lr, tf.float32),
          beta1=tf.constant(self._beta1, tf.float32),
          beta2=tf.constant(self._beta2, tf.float32),
          epsilon=tf.constant(self._eps, tf.float32), grad=grad)
    return tf.constant(True)

  def _skip(self):
    assign_add(self.skipped, 1)
    return tf.constant(False)

  def _update_scale(self, finite):
    def grow():
      assign_add(self.good_steps, 1)
      double = self.good_steps >= 2000
      assign(self.loss_scale,
             tf.where(double, self.loss_scale * 2, self.loss_scale))
      assign(self.good_steps,
             tf.where(double, tf.constant(0, tf.int64), self.good_steps))
      return tf.constant(True)
    def shrink():
      assign(self.loss_scale, tf.maximum(self.loss_scale / 2, 1.0))
      assign(self.good_steps, 0)
      return tf.constant(False)
    tf.cond(finite, grow, shrink)


# Data parallelism (tf.distribute) ---------------------------------------------
#
# With a strategy, Agent.train runs once per replica on its part of the
# batch, in a replica context; without one (distribute.strategy none) the
# helpers below are the plain ops. Variables are mirrored: each replica holds
# a copy and writes it itself (`assign`), which keeps the copies equal
# because every value written comes from all-reduced gradients or batch
# statistics.


def replicas():
  """How many replicas share the batch in the current context (1 without a
  strategy)."""
  context = tf.distribute.get_replica_context()
  return context.num_replicas_in_sync if context is not None else 1


def all_reduce_mean(values):
  """The mean over replicas of a tensor (or a list of them) in a replica
  context; the values themselves without distribution."""
  if replicas() == 1:
    return values
  return tf.distribute.get_replica_context().all_reduce(
      tf.distribute.ReduceOp.MEAN, values)


def batch_std(x):
  """The standard deviation over the whole batch, of every replica."""
  if replicas() == 1:
    return tf.math.reduce_std(x)
  x = tf.cast(x, tf.float32)
  mean, square = all_reduce_mean(
      [tf.reduce_mean(x), tf.reduce_mean(tf.square(x))])
  return tf.sqrt(tf.maximum(square - tf.square(mean), 0.0))


def assign(var, value):
  """var = value; in a replica context each replica writes its own copy
  (where a MirroredVariable's assign would want a cross-replica merge)."""
  tf.raw_ops.AssignVariableOp(
      resource=var.handle, value=tf.cast(value, var.dtype))


def assign_add(var, value):
  tf.raw_ops.AssignAddVariableOp(
      resource=var.handle, value=tf.cast(value, var.dtype))


_STRATEGY = {}


def strategy(strategy='none', cpu_devices=0, peer_timeout=60):
  """The tf.distribute strategy of `distribute.strategy` (one per process:
  logical devices can be set up only before TensorFlow first runs), or None
  for 'none'. mirrored: MirroredStrategy over the GPUs, or over `cpu_devices`
  logical CPU devices when given; multi_worker: MultiWorkerMirroredStrategy
  from the TF_CONFIG environment variable, one process per host.

  multi_worker: TensorFlow's health check pings every peer and aborts this
  process's collectives when one stays unreachable; it is set so that a dead
  peer is noticed within about `peer_timeout` seconds (a check every quarter
  of it, each waiting a quarter of it, three tries)."""
  kind = choices.check('distribute.strategy', strategy, choices.DISTRIBUTE)
  if kind == 'none':
    return None
  if kind in _STRATEGY:
    return _STRATEGY[kind]
  devices = None
  if cpu_devices:
    cpu = tf.config.list_physical_devices('CPU')[0]
    try:
      tf.config.set_logical_device_configuration(
          cpu, [tf.config.LogicalDeviceConfiguration()] * cpu_devices)
    except RuntimeError:
      if len(tf.config.list_logical_devices('CPU')) != cpu_devices:
        raise ValueError(
            f'distribute.cpu_devices {cpu_devices}: TensorFlow already runs '
            f'with {len(tf.config.list_logical_devices("CPU"))} CPU device(s); '
            'set it up before anything else uses TensorFlow') from None
    devices = [f'/cpu:{i}' for i in range(cpu_devices)]
  if kind == 'mirrored':
    result = tf.distribute.MirroredStrategy(devices)
  else:  # multi_worker
    from tensorflow.python.distribute import collective_all_reduce_strategy
    extended = collective_all_reduce_strategy.CollectiveAllReduceExtended
    extended._check_health_interval = max(1, int(peer_timeout / 4))
    extended._check_health_timeout = max(1, int(peer_timeout / 4))
    extended._check_health_retry_limit = 3
    result = tf.distribute.MultiWorkerMirroredStrategy()
  _STRATEGY[kind] = result
  return result


def schedule(string):
  """Parses a schedule once into a function of the step (a tensor):
  a constant ('1e-3'), 'linear(initial, final, duration)',
  'warmup(duration, value)', 'exp(initial, final, halflife)',
  'horizon(initial, final, duration)'."""
  string = str(string).strip()
  try:
    value = float(string)
    return lambda step: tf.constant(value, tf.float32)
  except ValueError:
    pass
  match = re.fullmatch(r'(\w+)\((.*)\)', string)
  kinds = ('linear', 'warmup', 'exp', 'horizon')
  if not match or match.group(1) not in kinds:
    raise ValueError(
        f'bad schedule {string!r}: use a number or one of '
        'linear(a,b,n), warmup(n,a), exp(a,b,halflife), horizon(a,b,n)')
  kind = match.group(1)
  try:
    args = [float(x) for x in match.group(2).split(',')]
  except ValueError:
    args = None
  if args is None or len(args) != {'warmup': 2}.get(kind, 3):
    example = {'linear': 'linear(3e-3,3e-4,2.5e6)',
               'warmup': 'warmup(1e4,1e-3)',
               'exp': 'exp(1e-2,1e-3,1e5)',
               'horizon': 'horizon(10,100,1e6)'}[kind]
    raise ValueError(
        f'bad schedule {string!r}: {kind} takes '
        f'{ {"warmup": 2}.get(kind, 3)} numbers, e.g. {example}')
  def fraction(step, duration):
    return tf.clip_by_value(tf.cast(step, tf.float32) / duration, 0, 1)
  def mix(step, initial, final, duration):  # From initial to final, linearly.
    f = fraction(step, duration)
    return (1 - f) * initial + f * final
  if kind == 'linear':
    return lambda step: mix(step, *args)
  if kind == 'warmup':
    duration, value = args  # The original's order: warmup(duration, value).
    return lambda step: fraction(step, duration) * value
  if kind == 'exp':
    initial, final, halflife = args
    return lambda step: (
        (initial - final) * 0.5 ** (tf.cast(step, tf.float32) / halflife)
        + final)
  return lambda step: 1 - 1 / mix(step, *args)  # horizon: a discount.


class StreamNorm(tf.Module):
  """Divides by a running mean of |x| (momentum 1 = off, as the default)."""

  def __init__(self, shape=(), momentum=0.99, scale=1.0, eps=1e-8):
    super().__init__()
    self._shape, self._momentum = tuple(shape), momentum
    self._scale, self._eps = scale, eps
    self.mag = tf.Variable(tf.ones(shape, tf.float32), trainable=False)

  def __call__(self, inputs):
    metrics = {}
    self.update(inputs)
    metrics['mean'] = tf.reduce_mean(inputs)
    metrics['std'] = batch_std(inputs)
    outputs = self.transform(inputs)
    metrics['normed_mean'] = tf.reduce_mean(outputs)
    metrics['normed_std'] = batch_std(outputs)
    return outputs, metrics

  def update(self, inputs):
    batch = tf.reshape(inputs, (-1,) + self._shape)
    mag = tf.reduce_mean(tf.abs(tf.cast(batch, tf.float32)), 0)
    mag = all_reduce_mean(mag)  # The batch of every replica.
    assign(self.mag, self._momentum * self.mag + (1 - self._momentum) * mag)

  def transform(self, inputs):
    values = tf.reshape(inputs, (-1,) + self._shape)
    values /= tf.cast(self.mag, values.dtype)[None] + self._eps
    values *= self._scale
    return tf.reshape(values, tf.shape(inputs))


def named_variables(module):
  """All variables of a module as {attribute path: variable}, in a fixed
  order."""
  flat = module._flatten(
      predicate=lambda v: isinstance(v, tf.Variable), with_path=True)
  named, seen = {}, set()
  for path, var in flat:
    if id(var) not in seen:  # A variable reachable twice is stored once.
      seen.add(id(var))
      named['/'.join(str(p) for p in path)] = var
  return named


def save_checkpoint(module, path):
  """Writes every variable (weights, optimizer slots, counters) to `path`
  atomically: a temp file is renamed over the old checkpoint only when it is
  complete, so a kill never leaves a broken checkpoint."""
  values = {name: var.numpy() for name, var in named_variables(module).items()}
  utils.atomic_write(
      path, lambda f: pickle.dump(values, f, protocol=pickle.HIGHEST_PROTOCOL),
      size=sum(value.nbytes for value in values.values()))


class CheckpointMismatch(ValueError):
  """A checkpoint of a model with other variables or sizes."""


# Reading the file needs no TensorFlow (common/rundir.py reads checkpoints).
CheckpointUnreadable = utils.CheckpointUnreadable
read_checkpoint = utils.read_checkpoint


def load_checkpoint(module, path, select=None):
  """Restores what `save_checkpoint` wrote; `select(name)` limits which
  variables are restored (all by default). A checkpoint from a model of other
  sizes raises CheckpointMismatch naming the differing variables, an
  unreadable file CheckpointUnreadable; either way nothing is assigned.
  Returns the checkpoint's {name: value}."""
  values = read_checkpoint(path)
  named = named_variables(module)
  if select:
    named = {n: v for n, v in named.items() if select(n)}
    values = {n: v for n, v in values.items() if select(n)}
  missing = sorted(set(named) - set(values))
  extra = sorted(set(values) - set(named))
  no_bias = [n for n in missing if n.endswith('cell/dense/bias')]
  if no_bias:
    raise CheckpointMismatch(
        f'checkpoint {path} was saved before the GRU had its bias '
        f'({no_bias[0]} is not in it; docs/faithfulness.md): this version '
        f'cannot load it, '
        f'start the run afresh in a new logdir')
  shapes = [(n, values[n].shape, tuple(v.shape)) for n, v in named.items()
            if n in values and values[n].shape != tuple(v.shape)]
  differ = [(n, f'{n}: checkpoint {a} vs model {b}') for n, a, b in shapes]
  differ += [(n, f'not in checkpoint: {n}') for n in missing]
  differ += [(n, f'not in model: {n}') for n in extra]
  if differ:
    # World-model variables first: a changed model size shows there, and the
    # behaviors' variables (sized by it) only follow from it.
    differ.sort(key=lambda item: not item[0].startswith('wm/'))
    lines = [line for _, line in differ[:5]]
    more = f' (and {len(differ) - 5} more)' if len(differ) > 5 else ''
    raise CheckpointMismatch(
        f'checkpoint {path} does not fit the model built from this config '
        f'(were model sizes changed?): ' + '; '.join(lines) + more)
  for name, var in named.items():
    var.assign(values[name])
  return values
