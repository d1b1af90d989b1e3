"""dreamerv2/eval.py and api.load: a trained run evaluated outside training,
beside a training process, and the errors users see."""

import hashlib
import json
import pathlib
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from common import utils

import test_train as T

ROOT = pathlib.Path(__file__).resolve().parent.parent
# Pong episodes of 300 steps: long enough for points, so returns differ.
RUN = {'time_limit': 300, 'steps': 400, 'eval_every': 200}
TRACKED = T.TRACKED.replace('dreamerv2/train.py', 'dreamerv2/eval.py')


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  logdir = tmp_path_factory.mktemp('eval') / 'pong'
  result = T.train(logdir, RUN)
  assert result.returncode == 0, result.stdout + result.stderr
  return logdir


def evaluate(*flags, timeout=300):
  return subprocess.run(
      [sys.executable, 'dreamerv2/eval.py', *map(str, flags)], cwd=ROOT,
      capture_output=True, text=True, timeout=timeout)


def report(result):
  assert result.returncode == 0, result.stdout + result.stderr
  return json.loads(result.stdout.strip().splitlines()[-1])


def digest(root, skip='eval'):
  """{relative path: sha1} of every file under root except under `skip`."""
  return {str(p.relative_to(root)): hashlib.sha1(p.read_bytes()).hexdigest()
          for p in sorted(root.rglob('*'))
          if p.is_file() and p.relative_to(root).parts[0] != skip}


API_EPISODES = '''
import json, sys
sys.path.insert(0, '.')
from dreamerv2 import api
run, seed, episodes = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
env = api.make_env(run, seed=seed)
agent = api.load(run, seed=seed)
returns = []
for _ in range(episodes):
  obs, state, total = env.reset(), None, 0.0
  while not obs['is_last']:
    action, state = agent.policy(obs, state)
    obs = env.step(action)
    total += float(obs['reward'])
  returns.append(total)
env.close()
print(json.dumps(returns))
'''


def test_eval_writes_the_json_and_a_gif_and_equals_the_api_loop(trained):
  before = digest(trained)
  result = report(evaluate('--logdir', trained, '--episodes', 3, '--seed', 7))
  assert len(result['episodes']) == 3
  assert [e['length'] for e in result['episodes']] == [300] * 3
  returns = [e['return'] for e in result['episodes']]
  assert result['mean'] == pytest.approx(np.mean(returns))
  assert result['min'] == min(returns) and result['max'] == max(returns)
  assert result['step'] == 400 * 4 and result['agent_step'] == 400
  outdir = trained / 'eval' / '1600'
  assert json.loads((outdir / 'eval.json').read_text()) == result
  (gif,) = result['videos']
  assert gif == str(outdir / 'episode-0.gif')
  from PIL import Image
  with Image.open(gif) as image:
    assert image.size == (64, 64)
    # 301 frames at 20 fps (PIL merges equal neighbours, adding their time).
    durations = []
    for index in range(image.n_frames):
      image.seek(index)
      durations.append(image.info['duration'])
  assert sum(durations) == 301 * 50
  # The same policy through the api, same seed: the same returns.
  api = subprocess.run(
      [sys.executable, '-c', API_EPISODES, str(trained), '7', '3'], cwd=ROOT,
      capture_output=True, text=True, timeout=300)
  assert api.returncode == 0, api.stderr
  assert json.loads(api.stdout.strip().splitlines()[-1]) == returns
  # Nothing of the run was touched: only eval/ is new.
  assert digest(trained) == before


def test_eval_beside_a_training_process(trained, tmp_path):
  logdir = tmp_path / 'pong'
  shutil.copytree(trained, logdir)
  process = T.start(logdir, {**RUN, 'steps': 1e5, 'eval_every': 1e4})
  try:
    lines = len(T.read_metrics(logdir))
    T.wait_for(lambda: len(T.read_metrics(logdir)) > lines + 1, process)
    result = report(evaluate('--logdir', logdir, '--episodes', 2))
    assert len(result['episodes']) == 2 and result['agent_step'] == 400
    assert process.poll() is None  # Training goes on.
    process.send_signal(signal.SIGINT)
    process.wait(timeout=60)
  finally:
    if process.poll() is None:
      process.kill()
  assert process.returncode == 0
  # The trainer's own files are whole: its checkpoint and every episode load.
  assert utils.read_checkpoint(logdir / 'variables.pkl')
  for path in (logdir / 'train_episodes').glob('*.npz'):
    T.load_episode(path)


def test_a_checkpoint_being_written_is_never_read_half_written(
    trained, tmp_path):
  logdir = tmp_path / 'pong'
  shutil.copytree(trained, logdir)
  old = (logdir / 'variables.pkl').read_bytes()
  new = (logdir / 'checkpoints' / 'variables-1600.pkl').read_bytes()
  values = utils.read_checkpoint(logdir / 'variables.pkl')
  values['tfstep'] = np.int64(999)  # Marks the new checkpoint.
  import pickle
  new = pickle.dumps(values)
  started = threading.Event()

  def slow_write(f):
    for start in range(0, len(new), len(new) // 20 + 1):
      f.write(new[start:start + len(new) // 20 + 1])
      f.flush()
      started.set()
      time.sleep(0.25)  # About 5 s for the whole file.

  writer = threading.Thread(
      target=utils.atomic_write, args=(logdir / 'variables.pkl', slow_write))
  writer.start()
  started.wait()
  steps = []  # Each read loads a whole file (a half-written one would raise).
  while writer.is_alive():
    steps.append(
        int(utils.read_checkpoint(logdir / 'variables.pkl')['tfstep']))
  result = report(evaluate('--logdir', logdir, '--episodes', 1, '--videos', 0))
  writer.join()
  # The old file until the rename, then the new one (the writer thread may
  # still be alive for a read or two after its rename).
  assert steps[0] == 400 and old != new, steps[:3]
  assert set(steps) <= {400, 999} and steps == sorted(steps), set(steps)
  assert result['agent_step'] == 999  # Written by then: the new one, whole.


@pytest.mark.parametrize('case, message, tf_loaded', [
    ('no_config', 'holds no config.yaml', False),
    ('no_checkpoint', 'holds no checkpoint', False),
    ('episodes', '--episodes must be at least 1, got 0', False),
    ('unknown_task', "Unknown Atari game 'pongg'", False),
    ('other_spaces',
     'task dmc_walker_walk has other observations than the run: '
     'image is (64, 64, 1) uint8 there, (64, 64, 3) uint8 here', False),
    ('unbuildable',
     'cannot build task crafter_reward with the run\'s settings: '
     'Crafter has no action repeat; got 4.', False),
    ('other_sizes', 'does not fit the model', True),
])
def test_bad_input_exits_2_with_one_line(
    trained, tmp_path, case, message, tf_loaded):
  logdir = tmp_path / 'run'
  flags = ['--logdir', logdir]
  if case == 'no_config':
    logdir.mkdir()
  elif case == 'no_checkpoint':
    logdir.mkdir()
    shutil.copy(trained / 'config.yaml', logdir)
  else:
    shutil.copytree(trained, logdir)
    flags += {'episodes': ['--episodes', '0'],
              'unknown_task': ['--task', 'atari_pongg'],
              'other_spaces': ['--task', 'dmc_walker_walk'],
              'unbuildable': ['--task', 'crafter_reward'],
              'other_sizes': []}[case]
  if case == 'other_sizes':
    other = tmp_path / 'other'
    result = T.train(
        other, {**RUN, 'rssm.deter': 48, 'steps': 300, 'time_limit': 50})
    assert result.returncode == 0, result.stderr
    flags += ['--checkpoint', other / 'variables.pkl']
  before = digest(logdir) if logdir.exists() else None
  result = subprocess.run(
      [sys.executable, '-c', TRACKED, *map(str, flags)], cwd=ROOT,
      capture_output=True, text=True, timeout=300)
  assert result.returncode == 2, result.stdout + result.stderr
  lines = [l for l in result.stderr.strip().splitlines()
           if l.startswith(('error', 'TF_LOADED'))]
  assert lines[-1] == f'TF_LOADED={tf_loaded}'
  assert len(lines) == 2 and lines[0].startswith('error: '), result.stderr
  assert message in lines[0]
  assert 'Traceback' not in result.stderr
  if before is not None:
    assert digest(logdir) == before
