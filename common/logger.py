"""One logger, several outputs: terminal, metrics.jsonl and TensorBoard.

The training script collects values with `add` / `scalar` / `image` / `video`
and calls `write` every `log_every` steps; each output then gets the written
step (env frames) and the collected values:

  logger = Logger(step, [TerminalOutput(5e7), JSONLOutput(logdir),
                         TensorBoardOutput(logdir)], multiplier=4)
  logger.add(metrics, prefix='train')
  logger.write(fps=True)

Values are normalised once, here: scalars become python floats, images uint8
[H, W, C] and videos uint8 [T, H, W, C], so an output tells them apart by ndim.
TensorFlow is imported only by TensorBoardOutput.
"""

import errno
import io
import json
import os
import pathlib
import re
import time

import numpy as np

from common import utils

# Shown first on the progress line, in this order; other scalars follow sorted.
KEY_METRICS = (
    'train_return', 'eval_return', 'fps', 'model_loss', 'actor_loss',
    'critic_loss')


class Logger:
  """Collects named values and writes them to every output at once."""

  def __init__(self, step, outputs, multiplier=1):
    self._step = step  # Read with int(); agent steps.
    self._outputs = outputs
    self._multiplier = multiplier  # Agent steps -> env frames (action repeat).
    # name -> normalised value; a name added twice keeps the last.
    self._values = {}
    self._last_fps = None  # (frames, time) of the previous write(fps=True).

  @property
  def step(self):
    """The step the next write is stamped with, in env frames."""
    return int(self._step) * self._multiplier

  def add(self, mapping, prefix=None):
    """Adds name -> value: 0-d is a scalar, 2-D/3-D an image, 4-D a video."""
    for name, value in dict(mapping).items():
      name = f'{prefix}_{name}' if prefix else name
      value = np.asarray(value)
      if value.ndim == 0:
        self.scalar(name, value)
      elif value.ndim in (2, 3):
        self.image(name, value)
      elif value.ndim == 4:
        self.video(name, value)
      else:
        raise ValueError(
            f"Cannot log '{name}' with shape {value.shape}: expected a scalar, "
            'an image [H, W] or [H, W, C], or a video [T, H, W, C].')

  def scalar(self, name, value):
    value = np.asarray(value)
    if value.size != 1:
      raise ValueError(
          f"Scalar '{name}' has shape {value.shape}; expected a single number.")
    self._values[name] = float(value.reshape(()))

  def image(self, name, value):
    value = np.asarray(value)
    if value.ndim == 2:
      value = value[:, :, None]
    if value.ndim != 3 or value.shape[-1] not in (1, 3, 4):
      raise ValueError(
          f"Image '{name}' has shape {value.shape}; expected [H, W] or "
          '[H, W, C] with C = 1, 3 or 4.')
    self._values[name] = to_uint8(value)

  def video(self, name, value):
    value = np.asarray(value)
    if value.ndim != 4 or value.shape[-1] not in (1, 3):
      raise ValueError(
          f"Video '{name}' has shape {value.shape}; expected [T, H, W, C] "
          'with C = 1 or 3.')
    self._values[name] = to_uint8(value)

  def write(self, fps=False):
    """Sends everything collected to all outputs and clears it."""
    step = self.step
    if fps:
      now = time.time()
      if self._last_fps is not None:
        frames, then = self._last_fps
        if now > then:
          self._values['fps'] = (step - frames) / (now - then)
      self._last_fps = (step, now)
    if not self._values:
      return
    summaries = list(self._values.items())
    self._values = {}
    for output in self._outputs:
      output(step, summaries)


def to_uint8(value):
  """Floats are taken to be in [0, 1]; integers are already pixel values."""
  if np.issubdtype(value.dtype, np.floating):
    value = np.clip(np.nan_to_num(value) * 255 + 0.5, 0, 255)
  return value.astype(np.uint8)


class TerminalOutput:
  """Prints one progress line per write: scalars whose name `pattern` finds."""

  def __init__(self, total_steps=None, pattern=r'.*'):
    # Env frames.
    self._total = int(float(total_steps)) if total_steps else None
    self._pattern = re.compile(pattern)

  def __call__(self, step, summaries):
    scalars = {k: v for k, v in summaries if np.ndim(v) == 0}
    fps = scalars.pop('fps', None)
    progress = f'{format_count(step)}'
    if self._total:
      progress += f' / {format_count(self._total)}'
    progress += ' frames'
    if fps:
      progress += f' | {fps:.0f} fps'
      if self._total and step < self._total:
        progress += f' | ETA {format_duration((self._total - step) / fps)}'
    names = [k for k in scalars if self._pattern.search(k)]
    first = [k for k in KEY_METRICS if k in names]
    names = first + sorted(k for k in names if k not in first)
    values = ' · '.join(f'{k} {scalars[k]:.3g}' for k in names)
    print(f'[{progress}] {values}'.rstrip(), flush=True)


def format_count(value):
  """1234567 -> '1.23M'."""
  for size, suffix in ((1e9, 'B'), (1e6, 'M'), (1e3, 'K')):
    if abs(value) >= size:
      return f'{value / size:.3g}{suffix}'
  return f'{value:.0f}'


def format_duration(seconds):
  """Two largest units: '1d 2h', '3h 12m', '4m 5s', '6s'."""
  seconds = int(seconds)
  parts = []
  for size, unit in ((86400, 'd'), (3600, 'h'), (60, 'm'), (1, 's')):
    if seconds >= size or (unit == 's' and not parts):
      parts.append(f'{seconds // size}{unit}')
      seconds %= size
  return ' '.join(parts[:2])


class JSONLOutput:
  """Appends {'step': frames, name: value, ...} per write to metrics.jsonl.

  The file is only ever appended to, flushed and synced to disk, so it
  survives crashes and resumes; after a resume from an older checkpoint it
  can hold a step twice (plot.py bins by step, so that is harmless).
  """

  def __init__(self, logdir):
    self._filename = pathlib.Path(logdir).expanduser() / 'metrics.jsonl'
    self._filename.parent.mkdir(parents=True, exist_ok=True)
    # A crash mid-write can leave a cut-off last line: end it, so the next
    # record starts on a line of its own (plot.py skips the broken one).
    if self._filename.exists() and self._filename.stat().st_size:
      with self._filename.open('rb+') as f:
        f.seek(-1, os.SEEK_END)
        if f.read(1) != b'\n':
          f.write(b'\n')

  def __call__(self, step, summaries):
    scalars = {k: v for k, v in summaries if np.ndim(v) == 0}
    if not scalars:
      return
    line = json.dumps({'step': int(step), **scalars}) + '\n'
    try:
      with self._filename.open('a') as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())
    except OSError as error:
      if error.errno in (errno.ENOSPC, errno.EDQUOT):
        raise utils.disk_full(self._filename, len(line)) from None
      raise


class TensorBoardOutput:
  """Scalars, images, and videos as animated GIF image summaries."""

  def __init__(self, logdir, fps=20):
    import tensorflow as tf  # Lazily: only this output needs TensorFlow.
    self._tf = tf
    self._fps = fps
    logdir = str(pathlib.Path(logdir).expanduser())
    self._writer = tf.summary.create_file_writer(logdir, max_queue=1000)

  def __call__(self, step, summaries):
    tf = self._tf
    with self._writer.as_default():
      for name, value in summaries:
        if np.ndim(value) == 0:
          tf.summary.scalar(name, value, step)
        elif np.ndim(value) == 3:
          tf.summary.image(name, value[None], step)
        else:
          self._video(name, value, step)
    self._writer.flush()

  def _video(self, name, video, step):
    # TensorBoard's image dashboard shows any encoded image the browser can
    # decode, so a GIF in a (v1) image summary plays as a video there.
    tf = self._tf
    frames, height, width, channels = video.shape
    image = tf.compat.v1.Summary.Image(
        height=height, width=width, colorspace=channels,
        encoded_image_string=encode_gif(video, self._fps))
    summary = tf.compat.v1.Summary()
    summary.value.add(tag=name, image=image)
    tf.summary.experimental.write_raw_pb(summary.SerializeToString(), step)


def encode_gif(video, fps):
  """uint8 [T, H, W, C] with C = 1 (grayscale) or 3 (RGB) -> GIF bytes."""
  from PIL import Image
  mode = 'L' if video.shape[-1] == 1 else 'RGB'
  images = [Image.fromarray(frame[..., 0] if mode == 'L' else frame, mode)
            for frame in video]
  if mode == 'RGB':
    # One palette for all frames, from a sample of them, keeps colours steady.
    sample = video[::max(1, len(video) // 16)]
    palette = Image.fromarray(np.concatenate(list(sample), 0)).quantize(256)
    images = [image.quantize(palette=palette, dither=Image.Dither.NONE)
              for image in images]
  buffer = io.BytesIO()
  images[0].save(
      buffer, format='GIF', save_all=True, append_images=images[1:],
      duration=max(1, round(1000 / fps)), loop=0)
  return buffer.getvalue()
