"""The two kinds of errors a user sees, and the one mapping from errors to
exit statuses that every entry point (train.py, eval.py, plot.py) uses.

  UsageError  the command must change: a bad value, an unknown task, a
              missing package, a logdir held by a live run. Exit 2 with one
              line, before any work where it can be checked then.
  RunEnded    the run ended early and is saved: an env failed, a peer of a
              multi-worker run died, the disk is full. Exit 1 with one line
              that says how to go on (its `hint`).

A Ctrl-C that the entry point did not handle as a stop exits 130. Any other
error is a bug and keeps its traceback. This module imports nothing of the
project, so every module can raise these.
"""

import contextlib
import sys


class UsageError(ValueError):
  """A command to fix: exit status 2 and one line."""


class RunEnded(Exception):
  """A run that stopped early and is saved: exit status 1 and one line, then
  `hint`; `details` (a traceback of another process) is printed before it."""

  hint = ''
  details = ''


def one_line(error):
  """The text of an error on one line (a numpy repr or a library's message
  may span several)."""
  return ' '.join(line.strip() for line in str(error).splitlines()
                  if line.strip())


@contextlib.contextmanager
def exit_on_errors(prefix='error', interrupted='Aborted by a second Ctrl-C.'):
  """Maps the errors raised inside to the exit statuses above; `prefix`
  starts the printed line (`error: ...`)."""
  try:
    yield
  except UsageError as e:
    print(f'{prefix}: {one_line(e)}', file=sys.stderr)
    sys.exit(2)
  except RunEnded as e:
    if e.details:
      print(e.details, file=sys.stderr)
    hint = f' {e.hint}' if e.hint else ''
    print(f'{prefix}: {one_line(e)}.{hint}', file=sys.stderr)
    sys.exit(1)
  except KeyboardInterrupt:
    print(interrupted, file=sys.stderr)
    sys.exit(130)
