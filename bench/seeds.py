"""Seeds of a learning benchmark, each trained by train.py in a child process.

A seed trains in LOGDIR/TASK/dreamerv2_tf2/SEED with the command line users
run; the same command resumes a logdir where it stopped, so a seed's run may
span sittings. Each sitting is a line of the seed's sittings.jsonl: start and
end time, agent steps and updates at both ends, exit status and the commit.
Ctrl-C (or SIGTERM) of the benchmark reaches the children (each in a session
of its own, so `kill -INT` of the benchmark alone works as a terminal's
Ctrl-C): each saves its checkpoint and exits, and no waiting seed starts.
No TensorFlow here.
"""

import json
import os
import pathlib
import pickle
import signal
import subprocess
import time

from common import utils

ROOT = pathlib.Path(__file__).resolve().parent.parent
METHOD = 'dreamerv2_tf2'


def seed_logdir(root, task, seed):
  return pathlib.Path(root).expanduser() / task / METHOD / str(seed)


def stored_steps(logdir):
  """Agent steps in the logdir's finished train episodes (as train.py
  counts)."""
  total = 0
  for filename in (logdir / 'train_episodes').glob('*.npz'):
    try:
      total += int(filename.stem.rsplit('-', 1)[1])
    except (IndexError, ValueError):
      pass
  return total


def eval_curve(logdir):
  """[(frames, eval_return)] from metrics.jsonl, one point per frame count."""
  points = {}
  path = logdir / 'metrics.jsonl'
  if not path.exists():
    return []
  for line in path.read_text().splitlines():
    try:
      record = json.loads(line)
    except ValueError:
      continue  # A line cut off by a kill.
    if 'eval_return' in record:
      points.setdefault(record['step'], []).append(record['eval_return'])
  return [(step, sum(v) / len(v)) for step, v in sorted(points.items())]


def updates_made(logdir):
  """The world model's optimizer step count from the checkpoint, or 0."""
  path = logdir / 'variables.pkl'
  if not path.exists():
    return 0
  with open(path, 'rb') as f:
    values = pickle.load(f)
  return int(values.get('wm/model_opt/updates', 0))


def sittings(logdir):
  """The sittings recorded in sittings.jsonl; a sitting whose end was not
  written (the benchmark itself was killed) ends at the logdir's newest file."""
  path = logdir / 'sittings.jsonl'
  if not path.exists():
    return []
  records = [json.loads(line) for line in path.read_text().splitlines()
             if line.strip()]
  done = []
  for record in records:
    if 'end' not in record:
      newest = max(
          (p.stat().st_mtime for p in logdir.rglob('*') if p.is_file()),
          default=record['start'])
      record = {**record, 'end': max(record['start'], newest),
                'estimated_end': True}
    done.append(record)
  return done


def close_killed_sitting(logdir):
  """Writes the estimated end of a sitting whose benchmark was killed, before
  a new sitting's files would move that estimate."""
  spent = sittings(logdir)
  if spent and spent[-1].get('estimated_end'):
    replace_last_sitting(logdir, spent[-1])


def replace_last_sitting(logdir, record):
  """Rewrites the last line of sittings.jsonl as `record` (atomically)."""
  path = logdir / 'sittings.jsonl'
  lines = [line for line in path.read_text().splitlines() if line.strip()]
  text = '\n'.join(lines[:-1] + [json.dumps(record)]) + '\n'
  utils.atomic_write(path, lambda f: f.write(text), mode='w')


def code_version():
  """The commit the children run (with '+changes' when the tree is dirty)."""
  try:
    commit = subprocess.run(
        ['git', 'rev-parse', '--short', 'HEAD'], cwd=ROOT, capture_output=True,
        text=True, check=True).stdout.strip()
    dirty = subprocess.run(
        ['git', 'status', '--porcelain', '--untracked-files=no'], cwd=ROOT,
        capture_output=True, text=True, check=True).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return None
  return commit + ('+changes' if dirty else '')


def append_line(path, record):
  with open(path, 'a') as f:
    f.write(json.dumps(record) + '\n')
    f.flush()
    os.fsync(f.fileno())


def finished(logdir, steps, action_repeat):
  """Whether the seed holds `steps` agent steps and their last evaluation."""
  curve = eval_curve(logdir)
  return (stored_steps(logdir) >= steps and bool(curve)
          and curve[-1][0] >= steps * action_repeat)


def end_sitting(logdir, process, output):
  """Writes the end of the sitting whose child `process` has exited."""
  output.close()
  last = (logdir / 'sittings.jsonl').read_text().splitlines()[-1]
  replace_last_sitting(logdir, {
      **json.loads(last), 'end': time.time(), 'end_step': stored_steps(logdir),
      'end_updates': updates_made(logdir), 'exit': process.returncode})


def run(logdirs, command, steps, action_repeat, jobs, env=None, name='bench'):
  """Trains the seeds, `jobs` at a time, until each holds `steps` agent steps.

  logdirs: {seed: logdir}; command(seed) is the child's command line; env:
  variables added to the children's environment. Seeds already finished are
  skipped. Returns False when Ctrl-C or SIGTERM stopped the run, True once all
  seeds have ended; a child that fails otherwise ends the benchmark with the
  end of its train.log."""
  env = {**os.environ, **(env or {})}
  if jobs > 1:
    threads = str(max(1, (os.cpu_count() or 1) // jobs))
    env.update(TF_NUM_INTRAOP_THREADS=threads, OMP_NUM_THREADS=threads)
  pending = [seed for seed, logdir in logdirs.items()
             if not finished(logdir, steps, action_repeat)]
  running = {}
  stopping = False

  def stop(signum, frame):
    nonlocal stopping
    stopping = True
    for process, _ in running.values():
      process.send_signal(signal.SIGINT)
  previous = {sig: signal.signal(sig, stop)
              for sig in (signal.SIGINT, signal.SIGTERM)}
  try:
    while running or (pending and not stopping):
      while pending and len(running) < jobs and not stopping:
        seed = pending.pop(0)
        logdir = logdirs[seed]
        logdir.mkdir(parents=True, exist_ok=True)
        close_killed_sitting(logdir)
        record = {'start': time.time(), 'start_step': stored_steps(logdir),
                  'start_updates': updates_made(logdir), 'jobs': jobs,
                  'commit': code_version()}
        append_line(logdir / 'sittings.jsonl', record)
        output = open(logdir / 'train.log', 'a')
        process = subprocess.Popen(
            command(seed), cwd=ROOT, env=env, stdout=output,
            stderr=subprocess.STDOUT, start_new_session=True)
        running[seed] = (process, output)
      time.sleep(1)
      for seed, (process, output) in list(running.items()):
        if process.poll() is None:
          continue
        del running[seed]
        end_sitting(logdirs[seed], process, output)
        if process.returncode != 0 and not stopping:
          log = logdirs[seed] / 'train.log'
          raise SystemExit(
              f'{name}: seed {seed} exited {process.returncode}; '
              f'the end of {log}:\n{log.read_text()[-2000:]}')
  finally:
    for seed, (process, output) in running.items():  # A seed failed.
      process.send_signal(signal.SIGINT)  # Saves, as on Ctrl-C.
      process.wait()
      end_sitting(logdirs[seed], process, output)
    for sig, handler in previous.items():
      signal.signal(sig, handler)
  return not stopping
