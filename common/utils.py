"""Step counters of the training loop, the one atomic file write, reading a
checkpoint file (a pickled {name: array}) without TensorFlow, and the Ctrl-C
handler of the training scripts."""

import contextlib
import errno
import os
import pathlib
import pickle
import shutil
import signal
import sys
import threading

from common import errors


class Counter:
  """An integer that callbacks can increment; `int(counter)` reads it."""

  def __init__(self, initial=0):
    self.value = int(initial)

  def __int__(self):
    return self.value

  def increment(self, amount=1):
    self.value += amount


class Every:
  """True once every `every` steps (never when `every` is 0)."""

  def __init__(self, every):
    self._every = every
    self._last = None

  def __call__(self, step):
    step = int(step)
    if not self._every:
      return False
    if self._last is None:
      self._last = step
      return True
    if step >= self._last + self._every:
      self._last += self._every * ((step - self._last) // self._every)
      return True
    return False


class Until:
  """True while `step` is below `until` (always when `until` is 0)."""

  def __init__(self, until):
    self._until = until

  def __call__(self, step):
    return (not self._until) or int(step) < self._until


class DiskFull(errors.RunEnded, OSError):
  """A write that failed for lack of space: the message names the file, the
  bytes it needed and the space that was free."""

  hint = ('The checkpoint and the episodes written before are kept; free some '
          'space and run the same command to resume.')

  def __str__(self):
    return self.strerror


def atomic_write(path, write, mode='wb', size=None):
  """Writes `path` so that it is either complete or untouched.

  write(f) fills a temp file beside it (`<name>.tmp`, which no loader reads),
  which is flushed, fsynced and renamed over `path`. On any failure the temp
  file is removed and `path` keeps its old content; a full disk raises
  DiskFull. `size`: the bytes the file needs, when known (for the message).
  """
  path = pathlib.Path(path)
  temp = path.with_name(path.name + '.tmp')
  try:
    with open(temp, mode) as f:
      write(f)
      f.flush()
      os.fsync(f.fileno())
    os.replace(temp, path)
  except BaseException as error:
    written = temp.stat().st_size if temp.exists() else 0
    temp.unlink(missing_ok=True)
    if isinstance(error, OSError) and error.errno in _FULL:
      raise disk_full(path, size or written, at_least=not size) from None
    raise


def disk_full(path, needed, at_least=False):
  """DiskFull for `path`, with the free space of its filesystem."""
  path = pathlib.Path(path)
  try:
    free = shutil.disk_usage(path.parent).free
  except OSError:
    free = None
  need = f'{"at least " if at_least else ""}{format_bytes(needed)}'
  have = (f'{format_bytes(free)} free' if free is not None
          else 'free space unknown')
  return DiskFull(
      errno.ENOSPC,
      f'no space left on device to write {path}: it needs {need}, '
      f'{have} on that filesystem')


def format_bytes(count):
  for unit, size in (('GB', 1e9), ('MB', 1e6), ('kB', 1e3)):
    if count >= size:
      return f'{count / size:.1f} {unit}'
  return f'{int(count)} bytes'


_FULL = (errno.ENOSPC, errno.EDQUOT)


class CheckpointUnreadable(ValueError):
  """A checkpoint file that cannot be read (truncated, not a checkpoint)."""


def read_checkpoint(path):
  """{name: numpy value} of a checkpoint file (tfutils.save_checkpoint);
  CheckpointUnreadable if it cannot be read."""
  try:
    with open(path, 'rb') as f:
      values = pickle.load(f)
  except OSError as e:
    raise CheckpointUnreadable(f'cannot read {path}: {e.strerror}') from None
  except Exception as e:  # A truncated or foreign file: any unpickling error.
    raise CheckpointUnreadable(
        f'{path} is not a complete checkpoint '
        f'({type(e).__name__}: {e})') from None
  if not isinstance(values, dict):
    raise CheckpointUnreadable(f'{path} does not hold a checkpoint')
  return values


def install_stop_handler(stop, message, file=None):
  """Ctrl-C or SIGTERM sets `stop` (a threading.Event) and prints `message`
  (to stdout unless `file`); a second Ctrl-C interrupts at once.

  The caller's loop checks `stop` between its steps, so no exception cuts
  into TensorFlow's code. Returns the previous handlers, or None off the main
  thread (where Python cannot install signal handlers, e.g. api.train in a
  worker thread).
  """
  if threading.current_thread() is not threading.main_thread():
    return None
  def handler(signum, frame):
    if stop.is_set() and signum == signal.SIGINT:
      raise KeyboardInterrupt()
    stop.set()
    print(message, file=file or sys.stdout, flush=True)
  return {sig: signal.signal(sig, handler)
          for sig in (signal.SIGINT, signal.SIGTERM)}


def restore_handlers(handlers):
  """Puts back what install_stop_handler returned."""
  for sig, handler in (handlers or {}).items():
    signal.signal(sig, handler)


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
