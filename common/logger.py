"""One logger, several outputs: terminal, metrics.jsonl, TensorBoard, and the
optional trackers Weights & Biases and MLflow.

The training script collects values with `add` / `scalar` / `image` / `video`
and calls `write` every `log_every` steps; each output then gets the written
step (env frames) and the collected values:

  logger = Logger(step, [TerminalOutput(5e7), JSONLOutput(logdir),
                         TensorBoardOutput(logdir)], multiplier=4)
  logger.add(metrics, prefix='train')
  logger.write(fps=True)

`make_outputs(names, logdir, config, ...)` builds the outputs from names (see
OUTPUTS); `check_outputs(names)` fails fast, before any work, on an unknown
name or a tracker whose package is not installed (requirements-extras.txt).

Values are normalised once, here: scalars become python floats, images uint8
[H, W, C] and videos uint8 [T, H, W, C], so an output tells them apart by ndim.
TensorFlow is imported only by TensorBoardOutput, wandb and mlflow only by
their outputs.
"""

import atexit
import errno
import importlib.util
import io
import json
import os
import pathlib
import re
import sys
import tempfile
import time
import urllib.parse

import numpy as np

from common import choices
from common import errors
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


# The names `make_outputs` accepts, in the order the docs list them.
OUTPUTS = ('terminal', 'jsonl', 'tensorboard', 'wandb', 'mlflow')
# A tracker name -> (the module it imports, the pip package that provides it).
TRACKERS = {'wandb': ('wandb', 'wandb'), 'mlflow': ('mlflow', 'mlflow-skinny')}
EXTRAS = 'pip install -r requirements-extras.txt'


class MissingTracker(errors.UsageError):
  """A tracker output was chosen whose Python package is not installed."""


def check_outputs(names, key='log.outputs'):
  """The names as a tuple, checked without importing anything, so that a run
  stops before any work: BadChoice for an unknown or repeated name,
  MissingTracker (with the pip command) for a tracker that is not installed.
  `names`: a sequence, or one string of names split by commas or spaces."""
  if isinstance(names, str):
    names = re.split(r'[\s,]+', names.strip())
  names = tuple(name for name in names if name)
  for name in names:
    choices.check(key, name, OUTPUTS)
  for name in set(names):
    if names.count(name) > 1:
      raise choices.BadChoice(f'{key} names {name!r} twice')
  for name in names:
    if name in TRACKERS:
      module, package = TRACKERS[name]
      _require_tracker(f'{key} {name!r}', module, package)
  return names


def _require_tracker(what, module, package):
  if importlib.util.find_spec(module) is None:
    raise MissingTracker(
        f'{what} needs the Python package {package}, which is not installed: '
        f'`pip install {pinned(package)}` (or `{EXTRAS}`)')


def pinned(package):
  """package==version as requirements-extras.txt pins it (the version the
  tests ran), or the bare name."""
  path = pathlib.Path(__file__).resolve().parent.parent / (
      'requirements-extras.txt')
  try:
    for line in path.read_text().splitlines():
      if line.split('==')[0].strip() == package:
        return line.split('#')[0].strip()
  except OSError:
    pass
  return package


def make_outputs(names, logdir, config=None, total_steps=None, pattern=r'.*',
                 options=None):
  """The outputs for `names` (OUTPUTS), in that order, after check_outputs.

  `total_steps` (env frames) and `pattern` go to TerminalOutput as train.py
  passes them; `config` (a Config or a dict) to the trackers as parameters.
  `options`: output name -> extra keyword arguments for its constructor, e.g.
  {'wandb': {'project': 'pong'}, 'mlflow': {'tracking_uri': 'sqlite:///x.db'}}.
  """
  names = check_outputs(names)
  options = dict(options or {})
  for name in options:
    choices.check('make_outputs options', name, OUTPUTS)
  builders = {
      'terminal': lambda **kw: TerminalOutput(total_steps, pattern, **kw),
      'jsonl': lambda **kw: JSONLOutput(logdir, **kw),
      'tensorboard': lambda **kw: TensorBoardOutput(logdir, **kw),
      'wandb': lambda **kw: WandBOutput(logdir, config, **kw),
      'mlflow': lambda **kw: MLflowOutput(logdir, config, **kw),
  }
  return [builders[name](**options.get(name, {})) for name in names]


def run_name(logdir):
  """The tracker's run name: the last three parts of the absolute logdir, as
  in LOGDIR = .../<task>/<method>/<seed> -> 'atari_pong/dreamerv2/1'."""
  path = pathlib.Path(logdir).expanduser().resolve()
  parts = [part for part in path.parts if part != path.anchor]
  return '/'.join(parts[-3:]) or str(path)


def flat_config(config):
  """Dotted key -> leaf value: `config.flat` of a Config, else a flattened
  (nested) mapping; {} for None."""
  if config is None:
    return {}
  if hasattr(config, 'flat'):
    return dict(config.flat)
  flat = {}
  for key, value in dict(config).items():
    if isinstance(value, dict) or hasattr(value, 'flat'):
      for inner, leaf in flat_config(value).items():
        flat[f'{key}.{inner}'] = leaf
    else:
      flat[str(key)] = value
  return flat


def _read_run_id(path):
  """The tracker run id kept in `path`, or None when there is none yet."""
  try:
    return path.read_text().strip() or None
  except FileNotFoundError:
    return None


def _write_run_id(path, run_id):
  utils.atomic_write(path, lambda f: f.write(f'{run_id}\n'), mode='w')


def sqlite_artifact_location(uri):
  """mlartifacts/ beside the database of a `sqlite:///` store (MLflow's own
  default is ./mlruns of the working directory), else None: the store's."""
  # sqlite:///relative.db or sqlite:////absolute.db: the path after '///'.
  database = uri[len('sqlite:///'):] if uri.startswith('sqlite:///') else ''
  if not database or database == ':memory:':
    return None
  database = pathlib.Path(urllib.parse.unquote(database)).resolve()
  return (database.parent / 'mlartifacts').as_uri()


def _png(image):
  """uint8 [H, W, C] with C = 1, 3 or 4 -> PNG bytes."""
  from PIL import Image
  image = image[..., 0] if image.shape[-1] == 1 else image
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, format='PNG')
  return buffer.getvalue()


class WandBOutput:
  """Scalars, images and GIF videos to a Weights & Biases run, at the step.

  The run is named after the logdir (run_name) and keeps its local files in
  LOGDIR/wandb/. Its id is kept in LOGDIR/wandb_run_id and passed back with
  resume='allow', so a resumed training run appends to the same W&B run.
  Online or offline is wandb's own setting (`mode`, else WANDB_MODE):
  offline writes LOGDIR/wandb/offline-run-*/, each session of a resumed run
  one more with the same id, and `wandb sync` uploads them into one run.
  W&B steps only increase: rows logged below the run's last step (a resume
  from an older checkpoint) are dropped by wandb; metrics.jsonl keeps them.
  """

  def __init__(self, logdir, config=None, project='dreamerv2', entity=None,
               name=None, mode=None, fps=20, **init_kwargs):
    import wandb  # Lazily: an optional package (requirements-extras.txt).
    self._wandb = wandb
    self._fps = fps
    logdir = pathlib.Path(logdir).expanduser()
    logdir.mkdir(parents=True, exist_ok=True)
    id_file = logdir / 'wandb_run_id'
    run_id = _read_run_id(id_file)
    # Lists rather than the Config's tuples: JSON has no tuples.
    params = {key: list(value) if isinstance(value, tuple) else value
              for key, value in flat_config(config).items()}
    # reinit='create_new': never finishes or reuses another run of this
    # process (the caller's own, a sweep's).
    self._run = wandb.init(
        project=project, entity=entity, name=name or run_name(logdir),
        id=run_id, resume='allow', dir=str(logdir), config=params, mode=mode,
        reinit='create_new', **init_kwargs)
    if self._run.id != run_id:
      _write_run_id(id_file, self._run.id)
    self._closed = False

  @property
  def run_id(self):
    return self._run.id

  def __call__(self, step, summaries):
    wandb = self._wandb
    data = {}
    for name, value in summaries:
      if np.ndim(value) == 0:
        data[name] = value
      elif np.ndim(value) == 3:
        data[name] = wandb.Image(value[..., 0] if value.shape[-1] == 1
                                 else value)
      else:
        # Our own GIF, as for TensorBoard: wandb's encoder from an array
        # needs moviepy, and wants [T, C, H, W].
        data[name] = wandb.Video(
            io.BytesIO(encode_gif(value, self._fps)), format='gif')
    if data:
      self._run.log(data, step=int(step))

  def close(self):
    """Finishes the run (wandb also does at exit); further calls do nothing."""
    if not self._closed:
      self._closed = True
      self._run.finish()


class MLflowOutput:
  """Scalars, and images and GIF videos as artifacts, to an MLflow run.

  Tracking store: `tracking_uri`, else MLFLOW_TRACKING_URI, else the local
  file store LOGDIR/mlruns (MLflow 3 keeps that store in maintenance mode
  behind MLFLOW_ALLOW_FILE_STORE, which this output sets for a file store;
  view it with `MLFLOW_ALLOW_FILE_STORE=true mlflow ui --backend-store-uri
  LOGDIR/mlruns`). A `sqlite:///path.db` store also needs sqlalchemy and
  alembic, and keeps the artifacts of an experiment it creates beside the
  database in mlartifacts/. MLflow's usage telemetry is turned off unless
  MLFLOW_DISABLE_TELEMETRY is set, so nothing leaves a local store.

  The run is named after the logdir (run_name) in `experiment`; its id is
  kept in LOGDIR/mlflow_run_id, so a resumed training run appends to the same
  MLflow run. Only the MlflowClient API is used: no active run, no global
  state of mlflow. The flat config goes in as parameters when the run is new,
  as strings cut to MLflow's length limit (parameters cannot change later).
  Videos are artifacts videos/<name>/<step>.gif, images images/<name>/<step>.png
  (MLflow has no video type).
  """

  def __init__(self, logdir, config=None, tracking_uri=None,
               experiment='dreamerv2', name=None, fps=20):
    logdir = pathlib.Path(logdir).expanduser()
    uri = (tracking_uri or os.environ.get('MLFLOW_TRACKING_URI')
           or (logdir.resolve() / 'mlruns').as_uri())
    scheme = urllib.parse.urlparse(uri).scheme
    if scheme in ('', 'file'):
      os.environ.setdefault('MLFLOW_ALLOW_FILE_STORE', 'true')
    elif scheme.split('+')[0] in ('sqlite', 'postgresql', 'mysql', 'mssql'):
      # A database store: MLflow's SQLAlchemy store, not in mlflow-skinny.
      for module in ('sqlalchemy', 'alembic'):
        _require_tracker(f'The MLflow store {uri}', module, module)
    logdir.mkdir(parents=True, exist_ok=True)
    # Before mlflow is imported: it starts its telemetry client then.
    os.environ.setdefault('MLFLOW_DISABLE_TELEMETRY', 'true')
    from mlflow import entities
    from mlflow import exceptions
    from mlflow import tracking
    self._entities = entities
    self._fps = fps
    self.tracking_uri = uri
    self._client = client = tracking.MlflowClient(uri)
    id_file = logdir / 'mlflow_run_id'
    run_id = _read_run_id(id_file)
    run = None
    if run_id:
      try:
        run = client.get_run(run_id)
      except exceptions.MlflowException as e:
        if e.error_code != 'RESOURCE_DOES_NOT_EXIST':
          raise
      if run is None or run.info.lifecycle_stage == 'deleted':
        print(f'MLflow run {run_id} of {id_file} is not in {uri} (or was '
              'deleted): starting a new run.', file=sys.stderr)
        run = None
    if run is None:
      run = client.create_run(
          self._experiment_id(experiment, uri),
          run_name=name or run_name(logdir),
          tags={'logdir': str(logdir.resolve())})
      self._log_params(run.info.run_id, flat_config(config))
      # Written last: a resumed run always has its parameters.
      _write_run_id(id_file, run.info.run_id)
    elif run.info.status != 'RUNNING':
      client.update_run(run.info.run_id, status='RUNNING')
    self.run_id = run.info.run_id
    self._closed = False
    atexit.register(self._close_at_exit)

  def _experiment_id(self, name, uri):
    experiment = self._client.get_experiment_by_name(name)
    if experiment is not None:
      return experiment.experiment_id
    return self._client.create_experiment(
        name, artifact_location=sqlite_artifact_location(uri))

  def _log_params(self, run_id, params):
    from mlflow.utils import validation
    limit = getattr(validation, 'MAX_PARAM_VAL_LENGTH', 6000)
    per_batch = getattr(validation, 'MAX_PARAMS_TAGS_PER_BATCH', 100)
    params = [self._entities.Param(key, str(value)[:limit])
              for key, value in params.items()]
    for start in range(0, len(params), per_batch):
      self._client.log_batch(run_id, params=params[start:start + per_batch])

  def __call__(self, step, summaries):
    step, now = int(step), int(time.time() * 1000)
    metrics = [self._entities.Metric(name, value, now, step)
               for name, value in summaries if np.ndim(value) == 0]
    for start in range(0, len(metrics), 1000):  # MLflow's batch limit.
      self._client.log_batch(self.run_id, metrics=metrics[start:start + 1000])
    media = [(name, value) for name, value in summaries if np.ndim(value) > 0]
    if not media:
      return
    with tempfile.TemporaryDirectory() as temp:
      for name, value in media:
        if np.ndim(value) == 3:
          kind, data, suffix = 'images', _png(value), 'png'
        else:
          kind, data, suffix = 'videos', encode_gif(value, self._fps), 'gif'
        folder = pathlib.Path(temp) / kind / name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f'{step}.{suffix}').write_bytes(data)
      self._client.log_artifacts(self.run_id, temp)

  def close(self, status='FINISHED'):
    """Ends the run with `status`; further calls do nothing."""
    if not self._closed:
      self._closed = True
      self._client.set_terminated(self.run_id, status)

  def _close_at_exit(self):
    # An uncaught exception has set sys.last_value by the time atexit runs.
    failed = getattr(sys, 'last_value', None) is not None
    self.close('FAILED' if failed else 'FINISHED')
