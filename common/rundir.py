"""A run directory (the logdir): what it holds, and reading and writing it.

  config.yaml            the run's config; a resume compares it with the new
  spaces.pkl             the agent's spaces, so that a run loads without env
  metrics.jsonl, events.out.tfevents.*    the logger's (common/logger.py)
  train_episodes/, eval_episodes/         one .npz per episode (replay.py)
  variables.pkl          the latest checkpoint (common/tfutils.py's format)
  checkpoints/variables-<frames>.pkl      the kept snapshots
  eval/<frames>/         eval.py's results
  lock                   held by the run that writes the logdir (`Lock`)

Every write is atomic (common.utils.atomic_write). Nothing here imports
TensorFlow at import time: eval.py and api.load find and check a run before
TensorFlow loads. A run that cannot go on raises config.ConfigError.
"""

import json
import os
import pathlib
import pickle
import shutil
import sys
import time

from common import config as config_lib
from common import utils
from common.config import ConfigError

CONFIG = 'config.yaml'
SPACES = 'spaces.pkl'
CHECKPOINT = 'variables.pkl'
SNAPSHOTS = 'checkpoints'  # checkpoints/variables-<frames>.pkl
TRAIN_EPISODES = 'train_episodes'
EVAL_EPISODES = 'eval_episodes'


def prepare(path):
  """The logdir as a Path, created; ConfigError if it cannot be written."""
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


def config_changes(logdir, config):
  """How `config` differs from the run's saved one: ['rssm.deter: 600 ->
  400'], or [] for a new run."""
  path = pathlib.Path(logdir) / CONFIG
  if not path.exists():
    return []
  try:
    saved = config_lib.Config.load(path)
  except Exception as e:
    print(f'Cannot read the saved {path} ({e}); it will be replaced.')
    return []
  return [f'{key}: {old} -> {new}'
          for key, old, new in config_lib.diff(saved, config)]


def save_config(logdir, config):
  config.save(pathlib.Path(logdir) / CONFIG)


def save_spaces(logdir, obs_space, act_space, envs_of_task):
  """spaces.pkl: the spaces the agent was built for, and whether its envs
  were config.task's (False for api.train's own env)."""
  spaces = {'obs_space': obs_space, 'act_space': act_space,
            'task': envs_of_task}
  utils.atomic_write(
      pathlib.Path(logdir) / SPACES, lambda f: pickle.dump(spaces, f))


def load(logdir):
  """(config, spaces) of a run, spaces None for a run from before
  spaces.pkl; ConfigError naming what is missing."""
  logdir = pathlib.Path(logdir).expanduser()
  if not (logdir / CONFIG).is_file():
    raise ConfigError(
        f'{logdir} holds no {CONFIG}: is it the logdir of a run?')
  try:
    config = config_lib.Config.load(logdir / CONFIG)
    config = config_lib.Config(
        config_lib.load_configs()['defaults']).update(config.flat)
  except (OSError, ValueError, KeyError) as e:
    raise ConfigError(f'cannot read {logdir / CONFIG}: {e}') from None
  config = config.update({'logdir': str(logdir)})
  spaces = None
  if (logdir / SPACES).is_file():
    with open(logdir / SPACES, 'rb') as f:
      spaces = pickle.load(f)
  return config, spaces


def snapshots(logdir):
  """The kept checkpoints of a run, newest first: [(frames, path)]."""
  found = []
  for path in (pathlib.Path(logdir) / SNAPSHOTS).glob('variables-*.pkl'):
    try:
      found.append((int(path.stem.split('-', 1)[1]), path))
    except ValueError:
      pass
  return sorted(found, reverse=True)


def find_checkpoint(logdir, checkpoint=None):
  """The checkpoint to load: `checkpoint` if given, else variables.pkl, else
  the newest snapshot. ConfigError if there is none."""
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


def save(agent, logdir, frames, keep):
  """Writes variables.pkl; with keep > 0 also the snapshot
  checkpoints/variables-<frames>.pkl, keeping the newest `keep` of them."""
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


def load_weights(agent, path, select=None, flag=None):
  """Loads the checkpoint at `path` into the agent (only the variables that
  `select(name)` picks, if given); returns the agent step it was saved at.
  ConfigError for a checkpoint that cannot be read or does not fit, prefixed
  with `flag` (the option that named it) when given."""
  from common import tfutils
  try:
    values = tfutils.load_checkpoint(agent, path, select)
  except (tfutils.CheckpointUnreadable, tfutils.CheckpointMismatch) as e:
    raise ConfigError(f'{flag}: {e}' if flag else str(e)) from None
  return int(values.get('tfstep', 0))


def restore(agent, logdir, config):
  """Loads the run's checkpoint into the agent, falling back to the newest
  readable snapshot when variables.pkl is damaged; with none, warm-starts
  from config.warm_start.checkpoint. Returns whether the run had a
  checkpoint. ConfigError when none is readable or one does not fit."""
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
      changes = config_changes(logdir, config)
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
    load_weights(agent, path, select, flag='--warm_start.checkpoint')
    print(f'Warm start from {path} ({warm.only}).')
  return False


# One writer per logdir -------------------------------------------------------
#
# A run holds LOGDIR/lock while it runs: a JSON file with its pid, host, start
# time and a heartbeat that a thread rewrites every HEARTBEAT seconds. It is
# created with O_CREAT | O_EXCL, which is atomic on a local disk and on NFS
# v3 and later (and on Lustre). A lock is stale when its process is gone
# (same host: the pid no longer runs, is a zombie, or runs another program
# that started later) or, from another host, when its heartbeat is older than
# STALE_AFTER seconds (a SIGKILLed or preempted run writes none).
#
# A stale lock is taken over so that of two runs resuming at once only one
# gets it: each renames the lock to a name of its own (a rename is atomic:
# one of them moves the file, the other finds none), and the one that moved
# the stale lock it judged deletes it and creates its own with O_EXCL; one
# that moved another run's fresh lock instead puts it back (os.link, which
# fails if a lock exists). The heartbeat checks that the lock is still its
# own: removed by hand, it is created again; held by another run (one that
# judged this one gone, e.g. after this host froze for STALE_AFTER), this run
# ends at once, without saving, so that one run writes the logdir.

LOCK = 'lock'
HEARTBEAT = 10
STALE_AFTER = 300


class LogdirInUse(ConfigError):
  """Another live run holds the logdir."""


def _process_stat(pid):
  """(state, start time in clock ticks since boot) of process `pid` (Linux),
  or None where /proc does not tell."""
  try:
    with open(f'/proc/{pid}/stat') as f:
      fields = f.read().rsplit(')', 1)[1].split()
    return fields[0], int(fields[19])
  except (OSError, ValueError, IndexError):
    return None


def _alive(holder):
  """Whether the lock's holder still runs (on this host)."""
  pid = holder.get('pid')
  try:
    os.kill(int(pid), 0)
  except ProcessLookupError:
    return False
  except (PermissionError, TypeError, ValueError):
    return pid is not None
  stat = _process_stat(pid)
  if stat is None:
    return True
  state, started = stat
  # A zombie has ended; its parent has not yet collected it.
  return state not in 'ZX' and holder.get('started') in (None, started)


def _read(path):
  """The lock at `path` as a dict, or None if it is missing or unreadable
  (e.g. being written)."""
  try:
    return json.loads(pathlib.Path(path).read_text())
  except (OSError, ValueError):
    return None


def _same_run(one, other):
  return all(one.get(k) == other.get(k)
             for k in ('pid', 'host', 'started', 'since'))


class Lock:
  """The logdir for one run: `with Lock(logdir):` takes it, or raises
  LogdirInUse naming the live holder; a stale lock is taken over with one
  line saying so. Released when the block ends."""

  def __init__(self, logdir, heartbeat=HEARTBEAT, stale_after=STALE_AFTER):
    import socket
    import threading
    self.path = pathlib.Path(logdir) / LOCK
    self._heartbeat, self._stale_after = heartbeat, stale_after
    self._stop = threading.Event()
    self._thread = None
    started = _process_stat(os.getpid())
    self.holder = {
        'pid': os.getpid(), 'host': socket.gethostname(),
        'started': started and started[1], 'since': time.time()}

  def __enter__(self):
    import threading
    taken_from = None
    for _ in range(5):
      if self._create():
        break
      held = _read(self.path)
      if held is None:  # Being written, or removed meanwhile: look again.
        time.sleep(0.1)
        continue
      if not self._stale(held):
        raise LogdirInUse(self._in_use(held))
      if self._set_aside(held):
        taken_from = held
    else:
      raise LogdirInUse(
          f'cannot take the lock {self.path}: it stays unreadable or keeps '
          f'changing; if no run uses logdir {self.path.parent}, delete it')
    if taken_from:
      print(f'Taking over the logdir from the run with pid '
            f'{taken_from.get("pid")} on {taken_from.get("host")} (since '
            f'{_when(taken_from.get("since"))}), which no longer runs.')
    self._thread = threading.Thread(target=self._beat, daemon=True)
    self._thread.start()
    return self

  def __exit__(self, *exc):
    self._stop.set()
    if self._thread:
      self._thread.join()
    if _read(self.path) == self._content():
      self.path.unlink(missing_ok=True)

  def _content(self):
    return {**self.holder, 'heartbeat': self._beat_time}

  def _create(self):
    self._beat_time = time.time()
    try:
      fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
      return False
    with os.fdopen(fd, 'w') as f:
      json.dump(self._content(), f)
    return True

  def _set_aside(self, held):
    """Removes the lock if it is still `held`, the stale one judged; False
    (the lock left as it was) when another run took it over meanwhile."""
    import uuid
    aside = self.path.with_name(f'{LOCK}.{uuid.uuid4().hex}.stale')
    try:
      os.rename(self.path, aside)
    except FileNotFoundError:
      return False  # Another run moved it first.
    moved = _read(aside)
    if moved != held:  # Another run's fresh lock: put it back.
      try:
        os.link(aside, self.path)
      except OSError:
        pass  # A lock exists again (or no hard links): its heartbeat judges.
    aside.unlink(missing_ok=True)
    return moved == held

  def _stale(self, held):
    if held.get('host') == self.holder['host']:
      return not _alive(held)
    return time.time() - float(held.get('heartbeat', 0)) > self._stale_after

  def _in_use(self, held):
    """LogdirInUse's message: who holds the logdir, and what to do."""
    text = (f'logdir {self.path.parent} is in use by the run with pid '
            f'{held.get("pid")} on {held.get("host")} since '
            f'{_when(held.get("since"))}: wait for it to end or stop it '
            f'(Ctrl-C), or train in another --logdir')
    if held.get('host') == self.holder['host']:
      return text
    try:
      stale = float(held.get('heartbeat')) + self._stale_after
    except (TypeError, ValueError):
      stale = None
    return (f'{text}. From this host that run counts as ended '
            f'{self._stale_after:.0f} s after its last heartbeat (at '
            f'{_when(stale)} unless it beats again); if you know it has '
            f'ended, delete {self.path}')

  def _beat(self):
    while not self._stop.wait(self._heartbeat):
      held = _read(self.path)
      if held is None and not self.path.exists():
        if self._create():
          print(f'Warning: {self.path} was removed while this run held it; '
                f'taken again.', file=sys.stderr, flush=True)
          continue
        held = _read(self.path)
      if held is None:
        continue  # Being written by another run: the next beat judges it.
      if held != self._content():
        self._lost(held)  # Ends the process.
      beat = time.time()
      text = json.dumps({**self.holder, 'heartbeat': beat})
      try:
        utils.atomic_write(self.path, lambda f: f.write(text), mode='w')
      except OSError:  # A full disk or a network filesystem's hiccup.
        continue  # The next beat tries again.
      self._beat_time = beat

  def _lost(self, held):
    """Another run took the lock over: end this one now, unsaved, so that
    one run writes the logdir (it resumes from what this one saved)."""
    sys.stdout.flush()
    print(f'error: the run with pid {held.get("pid")} on {held.get("host")} '
          f'took over {self.path} (since {_when(held.get("since"))}), '
          f'judging this run gone; this run ends now, without saving, so '
          f'that one run writes the logdir.', file=sys.stderr, flush=True)
    os._exit(1)


class Holder:
  """The run that holds a logdir, as seen by a process that waits on it
  without a lock of its own (a multi-worker run's worker waiting for the
  chief's first episode). gone() is None while it runs, else why it ended:
  its lock was removed or taken by another run, its pid no longer runs (same
  host), or its heartbeat has not changed for `silent_after` seconds of this
  process's clock (any host; no two hosts' clocks are compared)."""

  def __init__(self, logdir, silent_after):
    import socket
    self.path = pathlib.Path(logdir) / LOCK
    self.silent_after = silent_after
    self.host = socket.gethostname()
    self.held = None
    self.changed = self.missing = None  # time.monotonic() of each

  def gone(self):
    now = time.monotonic()
    held = _read(self.path)
    if held is None:
      # A heartbeat renames over the lock, never leaves it missing; a read
      # can still miss it once (an NFS client's stale handle).
      self.missing = self.missing or now
      return f'{self.path} was removed' if now - self.missing >= 1 else None
    self.missing = None
    if self.held is not None and not _same_run(held, self.held):
      return f'another run (pid {held.get("pid")}) took over {self.path}'
    beat = held.get('heartbeat')
    if self.held is None or beat != self.held.get('heartbeat'):
      self.held, self.changed = held, now
    if held.get('host') == self.host and not _alive(held):
      return f'its process (pid {held.get("pid")}) no longer runs'
    if now - self.changed > self.silent_after:
      return (f'the heartbeat of {self.path} has not changed for '
              f'{self.silent_after:g} s')
    return None


def _when(stamp):
  try:
    return time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(float(stamp)))
  except (TypeError, ValueError):
    return 'an unknown time'
