"""Small step-counting helpers used by the training loop."""

import time


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


class Timer:
  """Seconds since the last call of `reset`."""

  def __init__(self):
    self.reset()

  def reset(self):
    self._start = time.time()

  def __call__(self):
    return time.time() - self._start
