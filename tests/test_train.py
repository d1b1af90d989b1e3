"""dreamerv2/train.py end to end: what a run writes, resuming after a kill,
Ctrl-C, and the errors users see before anything starts.

Runs use Pong with a tiny model and 50-step episodes; one agent step is 4
env frames, so the logged steps are multiples of 4.
"""

import importlib.util
import json
import os
import pathlib
import pickle
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
TINY = {
    'configs': 'defaults atari debug', 'jit': True, 'precision': 32,
    'rssm.deter': 32, 'rssm.hidden': 32, 'rssm.stoch': 4, 'rssm.discrete': 4,
    'encoder.cnn_depth': 4, 'decoder.cnn_depth': 4,
    'reward_head.layers': 1, 'reward_head.units': 16,
    'discount_head.layers': 1, 'discount_head.units': 16,
    'actor.layers': 1, 'actor.units': 16,
    'critic.layers': 1, 'critic.units': 16,
    'imag_horizon': 5, 'dataset.batch': 4, 'dataset.length': 10,
    'time_limit': 50, 'prefill': 100, 'log_every': 100, 'eval_every': 200}
# A Python that reports at exit whether TensorFlow was imported.
TRACKED = (
    'import atexit, runpy, sys; '
    'atexit.register(lambda: sys.stderr.write('
    '"TF_LOADED=%s\\n" % ("tensorflow" in sys.modules))); '
    'sys.argv = ["dreamerv2/train.py"] + sys.argv[1:]; '
    'runpy.run_path("dreamerv2/train.py", run_name="__main__")')


def assert_refused_before_tensorflow(result, message, logdir):
  """A TRACKED train.py that stopped with exit 2 and one line naming
  `message`, before TensorFlow loaded and before writing `logdir`."""
  assert result.returncode == 2, result.stdout + result.stderr
  lines = result.stderr.strip().splitlines()
  assert lines[-1] == 'TF_LOADED=False'
  assert len(lines) == 2 and lines[0].startswith('error: '), result.stderr
  assert message in lines[0]
  assert not logdir.exists()  # Nothing was written.


def command(logdir, flags):
  """train.py with the tiny config, `flags` ({key: value}) set over it."""
  argv = [sys.executable, 'dreamerv2/train.py', '--logdir', str(logdir)]
  for key, value in {**TINY, **flags}.items():
    argv += [f'--{key}', *str(value).split()]
  return argv


def train(logdir, flags):
  return subprocess.run(
      command(logdir, flags), cwd=ROOT, capture_output=True, text=True,
      timeout=300)


def start(logdir, flags, **kwargs):
  """The run in the background, its output in logdir.parent / 'out.txt'."""
  out = open(pathlib.Path(logdir).parent / 'out.txt', 'a')
  return subprocess.Popen(
      command(logdir, flags), cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
      **kwargs)


def wait_for(condition, process, timeout=240):
  deadline = time.time() + timeout
  while not condition():
    assert process.poll() is None, (
        f'the run exited early ({process.returncode})')
    assert time.time() < deadline, 'timed out'
    time.sleep(0.1)


def read_metrics(logdir):
  path = pathlib.Path(logdir) / 'metrics.jsonl'
  if not path.exists():
    return []
  return [json.loads(line) for line in path.read_text().splitlines()
          if line.strip()]


def load_episode(path):
  with np.load(path) as data:
    return {key: data[key] for key in data.keys()}


@pytest.fixture(scope='module')
def finished_run(tmp_path_factory):
  logdir = tmp_path_factory.mktemp('run') / 'pong'
  result = train(logdir, {'steps': 400})
  assert result.returncode == 0, result.stdout + result.stderr
  return logdir, result


def test_a_debug_run_writes_config_metrics_episodes_and_checkpoint(
    finished_run):
  logdir, result = finished_run
  from common import config as config_lib
  config = config_lib.Config.load(logdir / 'config.yaml')
  assert (config.task, config.rssm.deter, config.action_repeat) == (
      'atari_pong', 32, 4)
  metrics = read_metrics(logdir)
  keys = set().union(*metrics)
  for key in ('train_return', 'train_length', 'eval_return', 'eval_length',
              'model_loss', 'kl_loss', 'image_loss', 'actor_loss',
              'critic_loss', 'fps', 'model_skipped_steps'):
    assert key in keys, key
  # Steps are env frames: agent steps x action_repeat 4, up to 400 x 4.
  steps = [line['step'] for line in metrics]
  assert all(step % 4 == 0 for step in steps)
  assert max(steps) == 1600 and steps == sorted(steps)
  assert [line['train_length'] for line in metrics
          if 'train_length' in line] == [50] * 8
  episodes = sorted((logdir / 'train_episodes').glob('*.npz'))
  assert sum(len(load_episode(path)['action']) - 1 for path in episodes) == 400
  # The random policy's episode after the prefill of 100 steps, as the
  # published release; then the agent's at steps 100 and 200, and the final
  # evaluation at step 400.
  assert len(list((logdir / 'eval_episodes').glob('*.npz'))) == 4
  assert [line['step'] for line in metrics if 'eval_return' in line] == [
      400, 400, 800, 1600]
  out = result.stdout
  assert (out.index('Prefill the replay')
          < out.index('Evaluate the random policy (1 episode).')
          < out.index('Pretrain the agent'))
  with open(logdir / 'variables.pkl', 'rb') as f:
    variables = pickle.load(f)
  assert any('model_opt' in name for name in variables)
  # As the original, a fresh run makes pretrain + 1 updates before it acts
  # (its first update built the variables); then one every train_every 16
  # agent steps (atari), from the first step after the prefill (101) to 400.
  assert 'Pretrain the agent (2 updates: 1 + pretrain 1)' in out
  assert int(variables['wm/model_opt/updates']) == 2 + len(range(101, 401, 16))
  assert 'Precision 32: float32 on CPU' in result.stdout
  assert 'Finished 400 steps' in result.stdout


def test_tensorboard_has_scalars_and_gif_videos(finished_run):
  import tensorflow as tf  # A hard requirement: a broken install fails here.
  logdir, _ = finished_run
  scalars, gifs = {}, {}
  for filename in logdir.glob('events.out.tfevents.*'):
    for event in tf.compat.v1.train.summary_iterator(str(filename)):
      for value in event.summary.value:
        if value.HasField('image'):
          gifs[value.tag] = value.image.encoded_image_string
        elif value.metadata.plugin_data.plugin_name == 'scalars':
          scalars.setdefault(value.tag, []).append(
              (event.step, float(tf.make_ndarray(value.tensor))))
  assert scalars['train_length'][0] == (200, 50.0)
  assert {'model_loss', 'eval_return'} <= set(scalars)
  # Policy videos of episodes, and the open-loop prediction of the model.
  assert {'train_policy_image', 'eval_policy_image',
          'train_openl_image'} <= set(gifs)
  assert all(gif.startswith(b'GIF8') for gif in gifs.values())


def test_resume_with_other_model_sizes_stops_with_the_mismatch(
    finished_run, tmp_path):
  logdir = tmp_path / 'pong'
  shutil.copytree(finished_run[0], logdir)
  saved = (logdir / 'config.yaml').read_text()
  result = train(logdir, {'steps': 800, 'rssm.deter': 48})
  assert result.returncode == 2, result.stdout + result.stderr
  assert 'rssm.deter: 32 -> 48' in result.stdout  # The overrides are reported.
  error = result.stderr.strip().splitlines()[-1]
  assert (error.startswith('error: checkpoint')
          and '(48, 16) vs model (64, 16)' in error)
  assert 'rssm.deter: 32 -> 48' in error
  assert 'Traceback' not in result.stderr
  assert (logdir / 'config.yaml').read_text() == saved


def test_kill_9_loses_no_episode_and_the_restart_continues(tmp_path):
  logdir = tmp_path / 'pong'
  flags = {'steps': 600}
  process = start(logdir, flags)
  try:
    wait_for(lambda: (logdir / 'variables.pkl').exists(), process)
    time.sleep(0.5)
  finally:
    process.kill()  # SIGKILL
    process.wait()
  before = read_metrics(logdir)
  lines_before = (logdir / 'metrics.jsonl').read_text().splitlines()
  episodes = sorted((logdir / 'train_episodes').glob('*.npz'))
  stored = sum(len(load_episode(path)['action']) - 1 for path in episodes)
  assert stored >= 200 and before

  result = train(logdir, flags)
  assert result.returncode == 0, result.stdout + result.stderr
  # The killed run's lock is stale (its pid is gone): taken over.
  assert (f'Taking over the logdir from the run with pid {process.pid} '
          in result.stdout)
  assert not (logdir / 'lock').exists()  # Released at the end.
  assert f'{stored} steps stored' in result.stdout
  for path in episodes:  # Every episode before the kill still loads.
    assert len(load_episode(path)['action']) == 51
  lines = (logdir / 'metrics.jsonl').read_text().splitlines()
  assert lines[:len(lines_before)] == lines_before
  after = [json.loads(line) for line in lines[len(lines_before):]]
  # The counter continues at the stored steps: at or after the last finished
  # episode. Steps of the episode cut by the kill were never stored, so a
  # training line logged during it may carry a later step than the restart.
  assert after[0]['step'] == stored * 4
  episode_ends = [line['step'] for line in before if 'train_length' in line]
  assert after[0]['step'] >= max(episode_ends)
  assert max(line['step'] for line in after) == 600 * 4
  total = sum(1 for _ in (logdir / 'train_episodes').glob('*.npz'))
  assert total == 12  # 600 steps in episodes of 50.


def test_a_second_run_on_a_live_logdir_stops_and_eval_reads_beside_it(
    finished_run, tmp_path):
  logdir = tmp_path / 'pong'
  process = start(logdir, {'steps': 400})
  try:
    wait_for(lambda: (logdir / 'variables.pkl').exists(), process)
    assert (logdir / 'lock').exists()
    second = train(logdir, {'steps': 400})
    # eval.py only reads: it never takes the lock and is never blocked by it.
    evaluated = subprocess.run(
        [sys.executable, 'dreamerv2/eval.py', '--logdir', str(logdir),
         '--episodes', '1', '--videos', '0'],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    process.wait(timeout=300)
  finally:
    if process.poll() is None:
      process.kill()
  assert second.returncode == 2, second.stdout + second.stderr
  lines = second.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('error: logdir '), lines
  assert f'in use by the run with pid {process.pid} on ' in lines[0]
  assert evaluated.returncode == 0, evaluated.stdout + evaluated.stderr
  # The first run finished untouched: what a solo run of the same command
  # writes (finished_run), the same rows at the same steps.
  assert process.returncode == 0
  solo, _ = finished_run
  for run in (logdir, solo):
    assert not (run / 'lock').exists()
  shape = lambda run: [(row['step'], sorted(k for k in row if k != 'fps'))
                       for row in read_metrics(run)]
  assert shape(logdir) == shape(solo)
  episodes = lambda run: len(list((run / 'train_episodes').glob('*.npz')))
  assert episodes(logdir) == episodes(solo) == 8


def stored_steps(logdir):
  """Agent steps in the episode files, from their names (<...>-<length>.npz)."""
  return sum(int(p.stem.rsplit('-', 1)[1])
             for p in (pathlib.Path(logdir) / 'train_episodes').glob('*.npz'))


def test_ctrl_c_in_the_pretraining_stops_between_updates(tmp_path):
  # A long pretrain (DMC's 101 updates take minutes on a CPU) answers Ctrl-C
  # at the next update, keeping the prefill's episodes.
  logdir = tmp_path / 'pong'
  process = start(logdir, {'steps': 1e5, 'pretrain': 100000})
  try:
    out = logdir.parent / 'out.txt'
    wait_for(lambda: 'Pretrain' in out.read_text(), process)
    time.sleep(2)
    process.send_signal(signal.SIGINT)
    process.wait(timeout=30)
  finally:
    if process.poll() is None:
      process.kill()
  text = out.read_text()
  assert process.returncode == 0, text
  assert 'Stopped at step 100 before training' in text, text
  assert stored_steps(logdir) == 100 and not (logdir / 'variables.pkl').exists()


def test_a_cpu_without_bfloat16_is_warned_about():
  from dreamerv2 import build
  import tempfile
  with tempfile.NamedTemporaryFile('w', suffix='cpuinfo') as f:
    f.write('flags\t\t: fpu sse avx2 avx512f\n')
    f.flush()
    assert build.cpu_has_bfloat16(f.name) is False
    warning = build.bfloat16_warning('bfloat16', 'CPU', f.name)
    assert '--precision 32' in warning and '\n' not in warning
    assert build.bfloat16_warning('float32', 'CPU', f.name) is None
    assert build.bfloat16_warning('float16', 'GPU', f.name) is None
    f.write('flags\t\t: fpu avx512_bf16\n')
    f.flush()
    assert build.bfloat16_warning('bfloat16', 'CPU', f.name) is None
    assert build.cpu_has_bfloat16(f.name) is True
  assert build.bfloat16_warning('bfloat16', 'CPU', '/no/such/file') is None
  assert build.cpu_has_bfloat16('/no/such/file') is None


def test_ctrl_c_saves_the_checkpoint_and_the_episode_in_progress(tmp_path):
  logdir = tmp_path / 'pong'
  # Env processes too: a terminal's Ctrl-C reaches the whole process group.
  process = start(
      logdir, {'steps': 1e5, 'eval_every': 1e4, 'envs_parallel': 'process'},
      start_new_session=True)
  try:
    wait_for(lambda: any('model_loss' in line for line in read_metrics(logdir)),
             process)
    assert not (logdir / 'variables.pkl').exists()
    time.sleep(1.5)  # Into an episode of 50 steps.
    os.killpg(process.pid, signal.SIGINT)
    process.wait(timeout=60)
  finally:
    if process.poll() is None:
      os.killpg(process.pid, signal.SIGKILL)
  out = (tmp_path / 'out.txt').read_text()
  assert process.returncode == 0, out
  assert 'saved checkpoint' in out and 'Traceback' not in out
  with open(logdir / 'variables.pkl', 'rb') as f:
    assert pickle.load(f)
  # Every step taken is stored: the episode in progress as one without is_last.
  stopped = int(out.split('Stopped at step ')[1].split(':')[0])
  assert stored_steps(logdir) == stopped > 100
  lengths = sorted(int(p.stem.rsplit('-', 1)[1])
                   for p in (logdir / 'train_episodes').glob('*.npz'))
  if stopped % 50:
    assert f'Kept {stopped % 50} steps of the episodes in progress.' in out
    (partial,) = [p for p in (logdir / 'train_episodes').glob('*.npz')
                  if int(p.stem.rsplit('-', 1)[1]) == stopped % 50]
    episode = load_episode(partial)
    assert episode['is_first'][0] and not episode['is_last'].any()
    assert lengths.count(50) == stopped // 50
  # The resumed run continues at that step: no random prefill, and the logged
  # steps never go back.
  result = train(logdir, {'steps': stopped + 20, 'eval_every': 1e4})
  assert result.returncode == 0, result.stdout + result.stderr
  assert f'{stopped} steps stored.' in result.stdout
  assert 'Prefill' not in result.stdout
  steps = [line['step'] for line in read_metrics(logdir)]
  assert steps == sorted(steps) and max(steps) == (stopped + 20) * 4
  # It ended 20 steps into an episode: those are stored too, so the same
  # command again finds the run finished and neither trains nor evaluates.
  assert stored_steps(logdir) == stopped + 20
  metrics = read_metrics(logdir)
  again = train(logdir, {'steps': stopped + 20, 'eval_every': 1e4})
  assert again.returncode == 0, again.stdout + again.stderr
  assert f'Finished {stopped + 20} steps' in again.stdout
  assert 'Start training' not in again.stdout
  assert read_metrics(logdir) == metrics


def test_kept_checkpoints_are_the_newest_and_a_damaged_one_falls_back(tmp_path):
  logdir = tmp_path / 'pong'
  # Saves after the phases ending at steps 200, 300, 400 and 500.
  result = train(
      logdir, {'steps': 500, 'eval_every': 100, 'checkpoints.keep': 2})
  assert result.returncode == 0, result.stdout + result.stderr
  kept = sorted(p.name for p in (logdir / 'checkpoints').iterdir())
  assert kept == ['variables-1600.pkl', 'variables-2000.pkl']  # Frames.
  latest = (logdir / 'variables.pkl').read_bytes()
  assert (logdir / 'checkpoints' / 'variables-2000.pkl').read_bytes() == latest
  # A truncated variables.pkl: the run resumes from the newest snapshot.
  (logdir / 'variables.pkl').write_bytes(latest[:len(latest) // 2])
  result = train(
      logdir, {'steps': 600, 'eval_every': 100, 'checkpoints.keep': 2})
  assert result.returncode == 0, result.stdout + result.stderr
  (warning,) = [l for l in result.stderr.splitlines()
                if l.startswith('Warning')]
  assert str(logdir / 'variables.pkl') in warning
  assert str(logdir / 'checkpoints' / 'variables-2000.pkl') in warning
  assert ('Pretrain' not in result.stdout
          and 'Finished 600 steps' in result.stdout)
  # Every checkpoint truncated: exit 2 naming them, and nothing is removed.
  for path in [logdir / 'variables.pkl', *(logdir / 'checkpoints').iterdir()]:
    path.write_bytes(path.read_bytes()[:100])
  listing = sorted((str(p), p.stat().st_size) for p in logdir.rglob('*')
                   if p.is_file())
  result = train(
      logdir, {'steps': 700, 'eval_every': 100, 'checkpoints.keep': 2})
  assert result.returncode == 2, result.stdout + result.stderr
  error = result.stderr.strip().splitlines()[-1]
  assert error.startswith(f'error: no readable checkpoint in {logdir}: ')
  assert 'variables.pkl' in error and 'variables-2400.pkl' in error
  assert sorted((str(p), p.stat().st_size)
                for p in logdir.rglob('*') if p.is_file()) == listing


def test_a_warm_start_takes_the_world_model_only(finished_run, tmp_path):
  import tensorflow as tf
  from common import config as config_lib
  from common import tfutils
  from common import rundir
  from dreamerv2 import build
  source, _ = finished_run
  saved = tfutils.read_checkpoint(source / 'variables.pkl')
  config = config_lib.Config.load(source / 'config.yaml').update({
      'logdir': str(tmp_path / 'new'), 'warm_start.checkpoint':
      str(source / 'variables.pkl'), 'warm_start.only': 'world_model'})
  env = build.make_env(config, 'train', 0)
  tf.random.set_seed(5)
  agent = build.agent(config, env.obs_space, env.act_space).agent
  assert rundir.restore(agent, tmp_path / 'new', config) is False
  named = tfutils.named_variables(agent)
  model = [n for n in named if n.startswith('wm/') and '_opt/' not in n]
  assert len(model) > 20
  for name in model:
    np.testing.assert_array_equal(
        named[name].numpy(), saved[name], err_msg=name)
  behavior = [n for n in named if n.startswith('_task_behavior/') and
              ('actor/' in n or 'critic/' in n) and n.endswith('kernel')]
  assert behavior and all(
      not np.array_equal(named[n].numpy(), saved[n]) for n in behavior)
  assert int(named['wm/model_opt/updates'].numpy()) == 0  # Fresh optimizer.
  # A checkpoint of other sizes names the first differing world-model variable.
  bigger = config.update({'rssm.deter': 48})
  agent = build.agent(bigger, env.obs_space, env.act_space).agent
  with pytest.raises(config_lib.ConfigError) as info:
    rundir.restore(agent, tmp_path / 'new', bigger)
  assert str(info.value).startswith('--warm_start.checkpoint: checkpoint ')
  assert ': wm/' in str(info.value)


@pytest.mark.parametrize('flags, message', [
    (['--task', 'atari_pongg'], 'atari_pong'),
    (['--task', 'walker_walk'], 'SUITE_NAME'),
    (['--expl_behavior', 'curious'],
     'greedy, random, plan2explore, model_loss'),
    (['--actor_grad', 'policy'], 'auto, reinforce, dynamics, both'),
    (['--envs_parallel', 'fork'], 'none, thread, process'),
    (['--precision', '8'], '16, 32'),
    (['--clip_rewards', 'clip'], 'identity, sign, tanh'),
    (['--rssm.std_act', 'exp'], 'softplus, sigmoid, sigmoid2'),
    (['--actor_opt.opt', 'sgd'], "actor_opt.opt 'sgd' is not one of: adam"),
    (['--critic.norm', 'batch'], "critic.norm 'batch' is not one of"),
    (['--actor.dist', 'beta'], 'auto, mse, binary'),
    (['--nosuchkey', '1'], 'nosuchkey'),
    (['--logdir', '/proc/x/run'], '/proc/x/run'),
    (['--logdir', ''], '--logdir'),
])
def test_bad_inputs_exit_2_before_tensorflow_loads(tmp_path, flags, message):
  logdir = tmp_path / 'run'
  if flags[0] != '--logdir':
    flags = ['--logdir', str(logdir), *flags]
  result = subprocess.run(
      [sys.executable, '-c', TRACKED, '--configs', 'defaults', 'atari', *flags],
      cwd=ROOT, capture_output=True, text=True, timeout=60)
  assert_refused_before_tensorflow(result, message, logdir)


@pytest.mark.skipif(
    importlib.util.find_spec('dm_control') is None, reason='needs dm_control')
def test_dmc_trains_with_its_envs_in_processes(tmp_path):
  # MuJoCo's EGL renderer and TensorFlow crash when loaded into one process.
  logdir = tmp_path / 'walker'
  flags = {'configs': 'defaults dmc_vision debug', 'task': 'dmc_walker_walk',
           'steps': 150, 'eval_every': 100, 'log_every': 50, 'pretrain': 1}
  result = train(logdir, flags)
  assert result.returncode == 0, result.stdout + result.stderr
  assert 'DMC envs run in processes' in result.stdout
  from common import config as config_lib
  assert config_lib.Config.load(
      logdir / 'config.yaml').envs_parallel == 'process'
  metrics = {k: v for line in read_metrics(logdir) for k, v in line.items()}
  assert {'train_return', 'eval_return', 'model_loss'} <= set(metrics)
  # Action repeat 2: 150 agent steps are 300 frames.
  assert max(line['step'] for line in read_metrics(logdir)) == 300


def test_a_gym_id_trains_in_env_processes_resumes_and_evaluates(tmp_path):
  logdir = tmp_path / 'cartpole'
  flags = {'configs': 'defaults debug', 'task': 'gym_CartPole-v1',
           'envs': 2, 'envs_parallel': 'process', 'action_repeat': 2,
           'encoder.mlp_layers': '32,32', 'decoder.mlp_layers': '32,32',
           'replay.minlen': 1, 'steps': 150, 'eval_every': 100,
           'log_every': 50}
  result = train(logdir, flags)
  assert result.returncode == 0, result.stdout + result.stderr
  assert 'Task gym_CartPole-v1 · 2 train env(s), envs_parallel process' in (
      result.stdout)
  metrics = read_metrics(logdir)
  assert any('train_return' in row for row in metrics)
  assert any('model_loss' in row for row in metrics)
  # Action repeat 2: the logged step is frames, two per agent step.
  assert max(row['step'] for row in metrics) in (300, 302)
  result = train(logdir, {**flags, 'steps': 200})
  assert result.returncode == 0, result.stdout + result.stderr
  assert 'Pretrain' not in result.stdout and 'Finished 20' in result.stdout
  evaluated = subprocess.run(
      [sys.executable, 'dreamerv2/eval.py', '--logdir', str(logdir),
       '--episodes', '2', '--videos', '0'],
      cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert evaluated.returncode == 0, evaluated.stdout + evaluated.stderr
  report = json.loads(evaluated.stdout.strip().splitlines()[-1])
  assert report['task'] == 'gym_CartPole-v1' and len(report['episodes']) == 2
  assert all(episode['return'] > 0 for episode in report['episodes'])


@pytest.mark.parametrize('flags, message', [
    ({'task': 'gym_CartPol-v1'}, 'CartPole-v1'),
    ({'task': 'gym_CartPole-v1', 'gym_kwargs': '{"nope": 1'}, 'gym_kwargs'),
])
def test_bad_gym_tasks_exit_2_with_one_line_and_write_nothing(
    tmp_path, flags, message):
  logdir = tmp_path / 'run'
  result = train(logdir, {'configs': 'defaults debug', **flags})
  assert result.returncode == 2, result.stdout + result.stderr
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('error: ') and (
      message in lines[0]), lines
  assert not logdir.exists() or not any(logdir.iterdir())


# Registers test-only gym ids for `--task gym_test_gym_ids:<id>`.
TEST_GYM_IDS = '''
import gymnasium
import numpy as np


class GridEnv(gymnasium.Env):
  """Two rows of choices: numpy prints this action space on two lines."""
  observation_space = gymnasium.spaces.Box(-1, 1, (3,), np.float32)
  action_space = gymnasium.spaces.MultiDiscrete([[2, 3], [2, 2]])


class NeedsBox2dEnv(gymnasium.Env):
  def __init__(self):
    raise gymnasium.error.DependencyNotInstalled(
        'Box2D is not installed,\\n run `pip install swig`')


gymnasium.register('TestGrid-v0', entry_point=GridEnv)
gymnasium.register('TestNeedsBox2d-v0', entry_point=NeedsBox2dEnv)
'''


@pytest.mark.parametrize('task, message', [
    ('gym_test_gym_ids:TestGrid-v0',
     "Task 'gym_test_gym_ids:TestGrid-v0': Unsupported action space "
     "MultiDiscrete(shape (2, 2))"),
    ('gym_test_gym_ids:TestNeedsBox2d-v0',
     'Box2D is not installed, run `pip install swig`'),
    ('gym_no_such_module:Thing-v0', "imports the module 'no_such_module'"),
], ids=['unusable_space', 'missing_dependency', 'missing_module'])
def test_a_gym_id_that_cannot_run_stops_before_tensorflow_with_one_line(
    tmp_path, task, message):
  (tmp_path / 'test_gym_ids.py').write_text(TEST_GYM_IDS)
  path = os.pathsep.join(
      [str(tmp_path)] + os.environ.get('PYTHONPATH', '').split(os.pathsep))
  logdir = tmp_path / 'run'
  result = subprocess.run(
      [sys.executable, '-c', TRACKED, '--logdir', str(logdir),
       '--configs', 'defaults', 'vector', '--task', task],
      cwd=ROOT, env={**os.environ, 'PYTHONPATH': path}, capture_output=True,
      text=True, timeout=60)
  assert_refused_before_tensorflow(result, message, logdir)


@pytest.mark.parametrize('behavior, actor_grad', [
    ('random', 'dynamics'), ('plan2explore', 'both'),
    ('model_loss', 'reinforce')])
def test_each_exploration_and_actor_gradient_trains(
    tmp_path, behavior, actor_grad):
  logdir = tmp_path / 'pong'
  result = train(logdir, {
      'steps': 150, 'expl_behavior': behavior, 'actor_grad': actor_grad,
      'disag_models': 2, 'expl_head.layers': 1, 'expl_head.units': 16})
  assert result.returncode == 0, result.stdout + result.stderr
  metrics = {k: v for line in read_metrics(logdir) for k, v in line.items()}
  assert np.isfinite(metrics['actor_loss'])
  expl = {k for k in metrics if k.startswith('expl_')}
  if behavior == 'random':
    assert not expl
  else:
    own = {'plan2explore': 'expl_ensemble_loss',
           'model_loss': 'expl_intr_head_loss'}
    assert {'expl_actor_loss', 'expl_critic_loss', own[behavior]} <= expl
  if actor_grad == 'both':
    assert 'actor_grad_mix' in metrics
  if actor_grad == 'dynamics':
    assert 'actor_advantage_mean' not in metrics


# A train.py whose os.fsync fails like a full disk for files named NAME.tmp.
FULL_DISK = '''
import errno, os, runpy, sys
real_fsync = os.fsync
def fsync(fd):
  if os.readlink(f'/proc/self/fd/{fd}').endswith(NAME):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
  return real_fsync(fd)
os.fsync = fsync
sys.argv = ['dreamerv2/train.py'] + sys.argv[1:]
runpy.run_path('dreamerv2/train.py', run_name='__main__')
'''


def test_a_full_disk_at_the_checkpoint_is_one_line_and_keeps_the_run(tmp_path):
  logdir = tmp_path / 'pong'
  result = train(logdir, {'steps': 200})
  assert result.returncode == 0, result.stdout + result.stderr
  checkpoint = (logdir / 'variables.pkl').read_bytes()
  episodes = sorted((logdir / 'train_episodes').glob('*.npz'))
  code = FULL_DISK.replace('NAME', repr('variables.pkl.tmp'))
  result = subprocess.run(
      [sys.executable, '-c', code] + command(logdir, {'steps': 400})[2:],
      cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode == 1, result.stdout + result.stderr
  assert 'Traceback' not in result.stderr
  (error,) = [line for line in result.stderr.splitlines()
              if line.startswith('error')]
  assert error.startswith(
      f'error: no space left on device to write {logdir / "variables.pkl"}: '
      'it needs ')
  assert ' MB, ' in error and ' free on that filesystem' in error
  # The old checkpoint and every finished episode are intact; no temp file.
  assert (logdir / 'variables.pkl').read_bytes() == checkpoint
  assert not list(logdir.rglob('*.tmp'))
  now = sorted((logdir / 'train_episodes').glob('*.npz'))
  assert set(episodes) <= set(now) and len(now) > len(episodes)
  for path in now:
    load_episode(path)
  # With space again, the same command resumes and finishes.
  result = train(logdir, {'steps': 400})
  assert result.returncode == 0, result.stdout + result.stderr
  assert 'Finished 400 steps' in result.stdout


def fake_nvidia_smi(directory):
  """A stand-in nvidia-smi that lists one GPU; returns a PATH with it first."""
  directory.mkdir(exist_ok=True)
  script = directory / 'nvidia-smi'
  script.write_text(
      '#!/bin/sh\necho "GPU 0: NVIDIA A100-SXM4-40GB (UUID: GPU-1)"\n')
  script.chmod(0o755)
  return f'{directory}:{os.environ["PATH"]}'


@pytest.mark.parametrize('gpu', [True, False], ids=['nvidia-smi', 'none'])
def test_make_installs_tensorflow_with_cuda_where_nvidia_smi_lists_a_gpu(
    tmp_path, gpu):
  env = dict(os.environ)
  if gpu:
    env['PATH'] = fake_nvidia_smi(tmp_path / 'bin')
  else:  # A PATH without any nvidia-smi.
    env['PATH'] = ':'.join(p for p in env['PATH'].split(':')
                           if not (pathlib.Path(p) / 'nvidia-smi').exists())
  # Dry run (-n), as if nothing were installed (-B): the commands it would run.
  result = subprocess.run(['make', '-n', '-B', '.venv/.installed'], cwd=ROOT,
                          capture_output=True, text=True, env=env, timeout=60)
  assert result.returncode == 0, result.stderr
  installs = [line for line in result.stdout.splitlines()
              if 'pip install' in line]
  version = [line.split('==')[1]
             for line in (ROOT / 'requirements.txt').read_text().splitlines()
             if line.startswith('tensorflow==')][0]
  assert installs[0] == '.venv/bin/pip install -r requirements.txt'
  cuda = f".venv/bin/pip install 'tensorflow[and-cuda]=={version}'"
  assert installs[1:] == ([cuda] if gpu else [])


def test_a_gpu_that_tensorflow_cannot_see_is_warned_about_once(tmp_path):
  logdir = tmp_path / 'pong'
  env = {**os.environ, 'PATH': fake_nvidia_smi(tmp_path / 'bin')}
  result = subprocess.run(
      command(logdir, {'steps': 120}), cwd=ROOT, capture_output=True, text=True,
      timeout=300, env=env)
  assert result.returncode == 0, result.stdout + result.stderr
  warnings = [l for l in result.stderr.splitlines() if 'nvidia-smi lists' in l]
  assert len(warnings) == 1
  assert ('NVIDIA A100' in warnings[0]
          and 'tensorflow[and-cuda]==2.21' in warnings[0])
  assert 'Precision 32: float32 on CPU' in result.stdout


def test_a_killed_env_process_ends_the_run_saved_with_its_name(tmp_path):
  logdir = tmp_path / 'pong'
  process = start(
      logdir, {'steps': 1e5, 'eval_every': 1e4, 'envs_parallel': 'process'})
  try:
    wait_for(lambda: any('model_loss' in line for line in read_metrics(logdir)),
             process)
    children = sorted(
        int(pid) for pid in (pathlib.Path('/proc') / str(process.pid) / 'task' /
                             str(process.pid) / 'children').read_text().split()
        if 'spawn_main' in (
            pathlib.Path('/proc') / pid / 'cmdline').read_bytes().decode())
    os.kill(children[0], signal.SIGKILL)  # The first built: the train env.
    process.wait(timeout=120)  # Not a hang.
  finally:
    if process.poll() is None:
      process.kill()
  out = (tmp_path / 'out.txt').read_text()
  assert process.returncode == 1, out
  assert 'Traceback' not in out
  (error,) = [line for line in out.splitlines() if line.startswith('error: ')]
  assert error.startswith(
      f'error: the process of atari_pong train env 0 (pid {children[0]}) died '
      f'(signal 9). The run is saved')
  assert 'saved checkpoint' in out
  assert utils_read(logdir / 'variables.pkl')


def utils_read(path):
  from common import utils
  return utils.read_checkpoint(path)


def metrics_without_wall_clock(logdir):
  return [{k: v for k, v in row.items() if k != 'fps'}
          for row in read_metrics(logdir)]


def compare_runs(a, b):
  """(metrics equal, weights equal) of two finished runs."""
  same_metrics = metrics_without_wall_clock(a) == metrics_without_wall_clock(b)
  wa = pickle.loads((a / 'variables.pkl').read_bytes())
  wb = pickle.loads((b / 'variables.pkl').read_bytes())
  same_weights = wa.keys() == wb.keys() and all(
      np.array_equal(wa[k], wb[k]) for k in wa)
  return same_metrics, same_weights


@pytest.mark.parametrize('flags', [
    {}, {'envs': 2, 'envs_parallel': 'process'}], ids=['one_env', 'processes'])
def test_deterministic_runs_of_one_seed_write_the_same_metrics_and_weights(
    tmp_path, flags):
  flags = {'steps': 160, 'log_every': 40, 'eval_every': 80,
           'deterministic': True, **flags}
  runs = [tmp_path / f'run{i}' / 'pong' for i in range(2)]
  for logdir in runs:
    result = train(logdir, flags)
    assert result.returncode == 0, result.stdout + result.stderr
  rows = metrics_without_wall_clock(runs[0])
  assert sum('model_loss' in row for row in rows) >= 2
  assert compare_runs(*runs) == (True, True)


def test_the_comparison_tells_two_seeds_apart(tmp_path):
  # Without `deterministic`, two runs of one seed on a CPU often match too
  # (every seed is set; only tf.data's batches sampled ahead race the driver
  # adding episodes, which short runs rarely notice), so that cannot show the
  # comparison's power; two seeds do.
  runs = []
  for seed in (0, 1):
    logdir = tmp_path / f'seed{seed}' / 'pong'
    result = train(logdir, {'steps': 160, 'log_every': 40, 'eval_every': 80,
                            'deterministic': True, 'seed': seed})
    assert result.returncode == 0, result.stdout + result.stderr
    runs.append(logdir)
  assert compare_runs(*runs) == (False, False)


@pytest.mark.skipif(importlib.util.find_spec('mlflow') is None,
                    reason='needs mlflow (make extras)')
def test_train_py_logs_to_mlflow_at_frames_and_warns_of_memory_first(
    tmp_path, monkeypatch):
  # The tracker gets what metrics.jsonl gets, at the same steps (env
  # frames), and the replay's memory warning comes before the prefill.
  from mlflow.tracking import MlflowClient
  monkeypatch.setenv('MLFLOW_ALLOW_FILE_STORE', 'true')  # To read it here.
  logdir = tmp_path / 'atari_pong' / 'dreamerv2' / '1'
  env = {**os.environ, 'MLFLOW_DISABLE_TELEMETRY': 'true',
         'PYTHONUNBUFFERED': '1'}
  env.pop('MLFLOW_TRACKING_URI', None)
  result = subprocess.run(
      command(logdir, {'steps': 150, 'log.outputs': 'jsonl mlflow',
                       'replay.capacity': '1e12'}),
      cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
      timeout=300, env=env)
  assert result.returncode == 0, result.stdout
  out = result.stdout
  warning = [line for line in out.splitlines()
             if line.startswith('Warning: at replay.capacity')]
  assert len(warning) == 1 and '--replay.capacity' in warning[0]
  assert out.index('Warning: at replay.capacity') < out.index('Prefill')
  client = MlflowClient((logdir / 'mlruns').resolve().as_uri())
  run = client.get_run((logdir / 'mlflow_run_id').read_text().strip())
  assert run.info.run_name == 'atari_pong/dreamerv2/1'
  assert run.data.params['steps'] == '150'
  rows = [row for row in read_metrics(logdir) if 'model_loss' in row]
  history = client.get_metric_history(run.info.run_id, 'model_loss')
  assert rows and [(m.step, m.value) for m in history] == [
      (row['step'], pytest.approx(row['model_loss'])) for row in rows]
  assert all(m.step % 4 == 0 for m in history)  # Frames: 4 per agent step.
