"""The logger: metrics.jsonl in env frames, the progress line, TensorBoard."""

import io
import json
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


def test_loading_the_logger_does_not_load_tensorflow():
  code = ('import sys, common.logger; '
          'assert "tensorflow" not in sys.modules, "tensorflow was imported"')
  subprocess.run([sys.executable, '-c', code], cwd=ROOT, check=True)
