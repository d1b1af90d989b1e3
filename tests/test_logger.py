"""The logger: metrics.jsonl in env frames, the progress line, TensorBoard,
and the optional trackers W&B and MLflow, read back offline with their own
readers."""

import importlib.util
import io
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from common import logger as logging_
from common.utils import Counter

ROOT = pathlib.Path(__file__).resolve().parent.parent


def read_jsonl(logdir):
  lines = (pathlib.Path(logdir) / 'metrics.jsonl').read_text().splitlines()
  return [json.loads(line) for line in lines]


def test_metrics_are_written_against_env_frames(tmp_path):
  step = Counter(10)
  logger = logging_.Logger(step, [logging_.JSONLOutput(tmp_path)], multiplier=4)
  logger.add({'return': np.float32(12.5), 'length': 100}, prefix='train')
  logger.scalar('model_loss', np.array(3.0, np.float64))
  logger.write()
  step.increment(5)
  logger.scalar('model_loss', 2.0)
  logger.write()
  assert read_jsonl(tmp_path) == [
      {'step': 40, 'train_return': 12.5, 'train_length': 100.0,
       'model_loss': 3.0},
      {'step': 60, 'model_loss': 2.0}]


def test_metrics_survive_a_second_logger_on_the_same_logdir(tmp_path):
  first = logging_.Logger(Counter(1), [logging_.JSONLOutput(tmp_path)])
  first.scalar('eval_return', 1.0)
  first.write()
  # A resumed run: a new logger appends and never rewrites earlier lines.
  second = logging_.Logger(Counter(2), [logging_.JSONLOutput(tmp_path)])
  second.scalar('eval_return', 2.0)
  second.write()
  assert read_jsonl(tmp_path) == [
      {'step': 1, 'eval_return': 1.0}, {'step': 2, 'eval_return': 2.0}]


def test_a_line_cut_off_by_a_crash_does_not_swallow_the_next_one(tmp_path):
  (tmp_path / 'metrics.jsonl').write_text(
      '{"step": 1, "eval_return": 1.0}\n{"st')
  logger = logging_.Logger(Counter(2), [logging_.JSONLOutput(tmp_path)])
  logger.scalar('eval_return', 2.0)
  logger.write()
  lines = (tmp_path / 'metrics.jsonl').read_text().splitlines()
  assert lines[1] == '{"st'
  assert json.loads(lines[2]) == {'step': 2, 'eval_return': 2.0}


def test_fps_is_env_frames_per_second_between_writes(tmp_path):
  step = Counter(0)
  logger = logging_.Logger(step, [logging_.JSONLOutput(tmp_path)], multiplier=4)
  logger.scalar('model_loss', 1.0)
  logger.write(fps=True)  # The first write has nothing to measure against.
  logger._last_fps = (0, logger._last_fps[1] - 2.0)  # As if 2 s had passed.
  step.increment(1000)
  logger.scalar('model_loss', 1.0)
  logger.write(fps=True)
  first, second = read_jsonl(tmp_path)
  assert 'fps' not in first
  assert second['fps'] == pytest.approx(4000 / 2.0, rel=0.05)


def test_values_are_sorted_into_scalars_images_and_videos():
  class Keep:
    def __call__(self, step, summaries):
      self.summaries = dict(summaries)
  output = Keep()
  logger = logging_.Logger(Counter(0), [output])
  logger.add({
      'loss': np.float16(2.0),
      'gray': np.zeros((8, 8)),
      'rgb': np.ones((8, 8, 3), np.float32),
      'policy': np.full((5, 8, 8, 1), 0.5, np.float32),
  }, prefix='train')
  logger.write()
  values = output.summaries
  assert values['train_loss'] == 2.0 and isinstance(values['train_loss'], float)
  assert values['train_gray'].shape == (8, 8, 1)
  assert (values['train_rgb'].dtype == np.uint8
          and values['train_rgb'].max() == 255)
  assert values['train_policy'].shape == (5, 8, 8, 1)
  assert values['train_policy'].dtype == np.uint8
  assert values['train_policy'].max() == 128
  with pytest.raises(ValueError, match="'bad'"):
    logger.add({'bad': np.zeros((2, 3, 8, 8, 3))})
  with pytest.raises(ValueError, match="'loss'"):
    logger.scalar('loss', np.zeros(3))


def test_progress_line_puts_key_metrics_first(capsys):
  terminal = logging_.TerminalOutput(total_steps=5e7)
  terminal(1_200_000, [
      ('zeta', 1.0), ('model_loss', 3800.0), ('eval_return', 15.0),
      ('alpha', 0.5), ('train_return', 12.0), ('fps', 512.0),
      ('train_policy', np.zeros((2, 4, 4, 1), np.uint8))])
  line = capsys.readouterr().out
  assert line.count('\n') == 1
  assert line.startswith('[1.2M / 50M frames | 512 fps | ETA 1d 2h]')
  assert line.split('] ')[1].strip() == (
      'train_return 12 · eval_return 15 · model_loss 3.8e+03 · alpha 0.5 · '
      'zeta 1')


def test_tensorboard_holds_scalars_and_gif_videos(tmp_path):
  import tensorflow as tf  # A hard requirement: a broken install fails here.
  logger = logging_.Logger(Counter(25), [logging_.TensorBoardOutput(tmp_path)],
                           multiplier=4)
  rng = np.random.default_rng(0)
  logger.scalar('model_loss', 1.5)
  logger.image('eval_image', rng.uniform(size=(16, 16, 3)))
  logger.video('train_policy_image',
               rng.integers(0, 255, (6, 16, 16, 3), dtype=np.uint8))
  logger.video('eval_policy_image', rng.uniform(size=(6, 16, 16, 1)))
  logger.write()
  scalars, gifs, images = {}, {}, set()
  for filename in tmp_path.glob('events.out.tfevents.*'):
    for event in tf.compat.v1.train.summary_iterator(str(filename)):
      for value in event.summary.value:
        if value.HasField('image'):
          assert event.step == 100
          gifs[value.tag] = value.image.encoded_image_string
        elif value.metadata.plugin_data.plugin_name == 'scalars':
          scalars[value.tag] = (
              event.step, float(tf.make_ndarray(value.tensor)))
        elif value.metadata.plugin_data.plugin_name == 'images':
          images.add(value.tag)
  assert scalars == {'model_loss': (100, 1.5)}
  assert images == {'eval_image'}
  assert set(gifs) == {'train_policy_image', 'eval_policy_image'}
  for name, gif in gifs.items():
    assert gif.startswith(b'GIF8'), name
    assert Image.open(io.BytesIO(gif)).n_frames == 6, name


def test_loading_the_logger_does_not_load_tensorflow_or_the_trackers():
  code = ('import sys, common.logger as logger; '
          'logger.check_outputs(["terminal", "jsonl", "tensorboard"]); '
          'loaded = {"tensorflow", "wandb", "mlflow"} & set(sys.modules); '
          'assert not loaded, f"{loaded} imported"')
  subprocess.run([sys.executable, '-c', code], cwd=ROOT, check=True)


# The trackers are extras (requirements-extras.txt, which `make test` installs):
# skipped when not installed, failing when installed but broken.
def needs(module):
  return pytest.mark.skipif(
      importlib.util.find_spec(module) is None,
      reason=f'{module} is not installed: {logging_.EXTRAS}')


CONFIG = {'rssm': {'deter': 1024, 'act': 'elu'}, 'steps': 1e8,
          'log_keys_video': ('image',)}


def write_two_steps(output):
  """Step 40: a scalar; step 60: a scalar and a 6-frame video."""
  step = Counter(10)
  logger = logging_.Logger(step, [output], multiplier=4)
  logger.scalar('model_loss', 3.0)
  logger.write()
  step.increment(5)
  logger.scalar('model_loss', 2.0)
  rng = np.random.default_rng(0)
  logger.video('train_policy_image',
               rng.integers(0, 255, (6, 16, 16, 3), dtype=np.uint8))
  logger.write()


@pytest.fixture
def offline_wandb(monkeypatch, tmp_path):
  """wandb offline and silent, its own files in tmp_path: no network, no
  writes to the home folder."""
  home = tmp_path / 'wandb-home'
  monkeypatch.setenv('WANDB_MODE', 'offline')
  monkeypatch.setenv('WANDB_SILENT', 'true')
  for name in ('WANDB_CONFIG_DIR', 'WANDB_CACHE_DIR', 'WANDB_DATA_DIR',
               'WANDB_ARTIFACT_DIR'):
    monkeypatch.setenv(name, str(home / name.lower()))
  for name in ('WANDB_API_KEY', 'WANDB_BASE_URL', 'WANDB_ENTITY',
               'WANDB_PROJECT', 'WANDB_RUN_ID', 'WANDB_RESUME', 'WANDB_DIR'):
    monkeypatch.delenv(name, raising=False)
  return tmp_path / 'atari_pong' / 'dreamerv2' / '1'


def read_wandb_run(rundir):
  """(run, config, history rows) of an offline run's .wandb log, read with
  wandb's own reader `wandb leet inspect --json`: wandb 0.31 has no Python
  API that reads a local run."""
  # WANDB_DIR: the CLI's own debug log goes to LOGDIR/wandb/, not to /tmp.
  env = {**os.environ, 'WANDB_DIR': str(rundir.parent.parent)}
  out = subprocess.run(
      [sys.executable, '-m', 'wandb', 'leet', 'inspect', '--json', str(rundir)],
      check=True, capture_output=True, text=True, stdin=subprocess.DEVNULL,
      env=env, timeout=60).stdout
  records = [json.loads(line) for line in out.splitlines()]
  config, history = {}, []
  for record in records:
    if record['type'] == 'run':
      config.update(record['run']['config']['update'])
    elif record['type'] == 'config':
      config.update(record['config'].get('update', {}))
    elif record['type'] == 'history':
      history.append(record['history']['item'])
  run = next(r['run'] for r in records if r['type'] == 'run')
  return run, config, history


@needs('wandb')
def test_wandb_offline_run_holds_scalars_config_and_gif_video(offline_wandb):
  logdir = offline_wandb
  output = logging_.WandBOutput(logdir, CONFIG)
  write_two_steps(output)
  output.close()
  run_id = (logdir / 'wandb_run_id').read_text().strip()
  assert run_id == output.run_id
  (rundir,) = (logdir / 'wandb').glob(f'offline-run-*-{run_id}')
  run, config, history = read_wandb_run(rundir)
  assert run['run_id'] == run_id
  assert run['display_name'] == 'atari_pong/dreamerv2/1'
  assert run['project'] == 'dreamerv2'
  assert config['rssm.deter'] == 1024 and config['steps'] == 1e8
  assert config['log_keys_video'] == ['image']
  assert [(row['_step'], row['model_loss']) for row in history] == [
      (40, 3.0), (60, 2.0)]
  # The history holds the video as a file of the run: its type and path.
  assert history[1]['train_policy_image._type'] == 'video-file'
  path = history[1]['train_policy_image.path']
  gif = (rundir / 'files' / path).read_bytes()
  assert gif.startswith(b'GIF8') and Image.open(io.BytesIO(gif)).n_frames == 6


@needs('wandb')
def test_a_resumed_wandb_run_appends_to_the_same_run(offline_wandb):
  logdir = offline_wandb
  first = logging_.WandBOutput(logdir, CONFIG)
  first(40, [('model_loss', 3.0)])
  first.close()
  # The resumed training run: a new output on the same logdir.
  second = logging_.WandBOutput(logdir, {**CONFIG, 'steps': 2e8})
  second(80, [('model_loss', 1.0)])
  second.close()
  assert second.run_id == first.run_id
  # Offline, each session writes a run dir of that id (`-1` added within the
  # same second); `wandb sync` sends both to that one run.
  rundirs = list((logdir / 'wandb').glob(f'offline-run-*-{first.run_id}*'))
  assert len(rundirs) == 2
  sessions = sorted((read_wandb_run(rundir) for rundir in rundirs),
                    key=lambda session: session[0]['start_time'])
  for run, _, _ in sessions:
    assert run['run_id'] == first.run_id and run['resume']
  rows = [(row['_step'], row['model_loss'])
          for _, _, history in sessions for row in history]
  assert rows == [(40, 3.0), (80, 1.0)]
  # A config value may change on resume.
  assert [config['steps'] for _, config, _ in sessions] == [1e8, 2e8]


@pytest.fixture
def local_mlflow(monkeypatch, tmp_path):
  """MLflow on the default store, LOGDIR/mlruns; no telemetry."""
  monkeypatch.delenv('MLFLOW_TRACKING_URI', raising=False)
  monkeypatch.setenv('MLFLOW_DISABLE_TELEMETRY', 'true')
  return tmp_path / 'atari_pong' / 'dreamerv2' / '1'


@needs('mlflow')
def test_mlflow_run_holds_scalars_params_and_gif_artifacts(local_mlflow):
  from mlflow.tracking import MlflowClient
  logdir = local_mlflow
  output = logging_.MLflowOutput(logdir, {**CONFIG, 'long': 'x' * 7000})
  write_two_steps(output)
  output.close()
  assert output.tracking_uri == (logdir / 'mlruns').resolve().as_uri()
  run_id = (logdir / 'mlflow_run_id').read_text().strip()
  assert run_id == output.run_id
  client = MlflowClient(output.tracking_uri)
  run = client.get_run(run_id)
  assert run.info.run_name == 'atari_pong/dreamerv2/1'
  assert run.info.status == 'FINISHED'
  assert client.get_experiment(run.info.experiment_id).name == 'dreamerv2'
  history = client.get_metric_history(run_id, 'model_loss')
  assert [(m.step, m.value) for m in history] == [(40, 3.0), (60, 2.0)]
  params = run.data.params
  assert params['rssm.deter'] == '1024' and params['steps'] == '100000000.0'
  assert params['log_keys_video'] == "('image',)"
  assert params['long'] == 'x' * 6000  # Cut to MLflow's limit.
  (artifact,) = client.list_artifacts(run_id, 'videos/train_policy_image')
  assert artifact.path == 'videos/train_policy_image/60.gif'
  gif = pathlib.Path(client.download_artifacts(
      run_id, artifact.path, str(logdir / 'download'))).read_bytes()
  assert gif.startswith(b'GIF8') and Image.open(io.BytesIO(gif)).n_frames == 6


@needs('mlflow')
def test_a_resumed_mlflow_run_appends_to_the_same_run(local_mlflow):
  from mlflow.tracking import MlflowClient
  logdir = local_mlflow
  first = logging_.MLflowOutput(logdir, CONFIG)
  first(40, [('model_loss', 3.0)])
  first.close()
  # Parameters cannot change: a resumed run keeps the first ones.
  second = logging_.MLflowOutput(logdir, {**CONFIG, 'steps': 2e8})
  assert second.run_id == first.run_id
  client = MlflowClient(second.tracking_uri)
  assert client.get_run(second.run_id).info.status == 'RUNNING'
  second(80, [('model_loss', 1.0)])
  second.close('FAILED')
  run = client.get_run(first.run_id)
  assert run.info.status == 'FAILED'
  assert run.data.params['steps'] == '100000000.0'
  history = client.get_metric_history(first.run_id, 'model_loss')
  assert [(m.step, m.value) for m in history] == [(40, 3.0), (80, 1.0)]
  (experiment,) = [e for e in client.search_experiments()
                   if e.name == 'dreamerv2']
  assert len(client.search_runs([experiment.experiment_id])) == 1


@needs('mlflow')
def test_mlflow_starts_a_new_run_when_the_kept_id_is_not_in_the_store(
    local_mlflow, capsys):
  logdir = local_mlflow
  logdir.mkdir(parents=True)
  (logdir / 'mlflow_run_id').write_text('0123456789abcdef0123456789abcdef\n')
  output = logging_.MLflowOutput(logdir)
  output.close()
  assert output.run_id != '0123456789abcdef0123456789abcdef'
  assert (logdir / 'mlflow_run_id').read_text().strip() == output.run_id
  assert 'starting a new run' in capsys.readouterr().err


@needs('mlflow')
def test_make_outputs_gives_a_tracker_the_config_and_its_options(
    local_mlflow, monkeypatch):
  from mlflow.tracking import MlflowClient
  logdir = local_mlflow
  (output,) = logging_.make_outputs(
      ['mlflow'], logdir, CONFIG, options={'mlflow': {'experiment': 'pong'}})
  client = MlflowClient(output.tracking_uri)
  run = client.get_run(output.run_id)
  assert client.get_experiment(run.info.experiment_id).name == 'pong'
  assert run.data.params['rssm.act'] == 'elu'
  # At exit, a run that an uncaught exception ended is marked FAILED.
  monkeypatch.setattr(sys, 'last_value', RuntimeError('crash'), raising=False)
  output._close_at_exit()
  assert client.get_run(output.run_id).info.status == 'FAILED'


def test_check_outputs_names_the_pip_command_of_a_missing_tracker(
    monkeypatch, tmp_path):
  find_spec = importlib.util.find_spec
  monkeypatch.setattr(
      importlib.util, 'find_spec',
      lambda name, *args, **kwargs: None
      if name in ('wandb', 'mlflow', 'sqlalchemy')
      else find_spec(name, *args, **kwargs))
  assert logging_.check_outputs(['terminal', 'jsonl']) == ('terminal', 'jsonl')
  with pytest.raises(logging_.MissingTracker) as error:
    logging_.check_outputs(['terminal', 'wandb'])
  assert isinstance(error.value, ValueError)
  assert str(error.value) == (
      "log.outputs 'wandb' needs the Python package wandb, which is not "
      'installed: `pip install wandb==0.31.0` (or `pip install -r '
      'requirements-extras.txt`)')
  # The version the extras pin, the one the tests ran with.
  assert 'wandb==0.31.0' in (ROOT / 'requirements-extras.txt').read_text()
  with pytest.raises(logging_.MissingTracker,
                     match='install mlflow-skinny==3.18.0'):
    logging_.check_outputs('jsonl,mlflow')
  # A database store needs more than mlflow-skinny: said before any work.
  with pytest.raises(logging_.MissingTracker, match='pip install sqlalchemy'):
    logging_.MLflowOutput(tmp_path / 'run', tracking_uri='sqlite:///x.db')
  assert not (tmp_path / 'run').exists()


def test_check_outputs_names_the_accepted_outputs():
  with pytest.raises(ValueError) as error:
    logging_.check_outputs(['terminal', 'wandbb'])
  assert str(error.value) == (
      "log.outputs 'wandbb' is not one of: terminal, jsonl, tensorboard, "
      'wandb, mlflow')
  with pytest.raises(ValueError, match="'jsonl' twice"):
    logging_.check_outputs('jsonl jsonl')


def test_make_outputs_builds_the_named_outputs_in_order(tmp_path, capsys):
  terminal, jsonl = logging_.make_outputs(
      ['terminal', 'jsonl'], tmp_path, total_steps=400,
      pattern='^(?!hidden)')
  assert isinstance(terminal, logging_.TerminalOutput)
  assert isinstance(jsonl, logging_.JSONLOutput)
  logger = logging_.Logger(Counter(25), [terminal, jsonl], multiplier=4)
  logger.add({'model_loss': 2.0, 'hidden': 1.0})
  logger.write()
  assert capsys.readouterr().out.startswith(
      '[100 / 400 frames] model_loss 2\n')
  assert read_jsonl(tmp_path) == [
      {'step': 100, 'model_loss': 2.0, 'hidden': 1.0}]
  with pytest.raises(ValueError, match="'wandbb' is not one of"):
    logging_.make_outputs(['jsonl'], tmp_path, options={'wandbb': {}})


def test_run_names_are_the_logdir_tail(tmp_path):
  assert logging_.run_name(tmp_path / 'atari_pong' / 'dreamerv2' / '1') == (
      'atari_pong/dreamerv2/1')
  assert logging_.run_name('/run') == 'run'
  assert logging_.flat_config({'a': {'b': 1}, 'c': (2,)}) == {
      'a.b': 1, 'c': (2,)}


def test_a_sqlite_store_keeps_its_artifacts_beside_the_database(
    tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  location = logging_.sqlite_artifact_location
  assert location('sqlite:////data/runs/mlflow.db') == (
      'file:///data/runs/mlartifacts')
  assert location('sqlite:///mlflow.db') == (tmp_path / 'mlartifacts').as_uri()
  assert location('sqlite:///:memory:') is None
  assert location('file:///data/mlruns') is None
  assert location('http://localhost:5000') is None
