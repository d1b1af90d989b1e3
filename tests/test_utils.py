"""The one atomic write (temp file, fsync, rename) and what a full disk does."""

import errno
import os
import pathlib
import pickle

import pytest

from common import utils


def fail_after(count, code=errno.ENOSPC):
  """A write function that writes `count` bytes, then fails like a full disk."""
  def write(f):
    f.write(b'x' * count)
    f.flush()
    raise OSError(code, os.strerror(code))
  return write


def test_a_complete_write_replaces_the_file(tmp_path):
  path = tmp_path / 'variables.pkl'
  path.write_bytes(b'old')
  utils.atomic_write(path, lambda f: f.write(b'new'))
  assert path.read_bytes() == b'new'
  assert sorted(p.name for p in tmp_path.iterdir()) == ['variables.pkl']


def test_a_full_disk_keeps_the_old_file_removes_the_temp_and_says_why(tmp_path):
  path = tmp_path / 'variables.pkl'
  path.write_bytes(b'old checkpoint')
  with pytest.raises(utils.DiskFull) as info:
    utils.atomic_write(path, fail_after(5000), size=11_000_000)
  message = str(info.value)
  assert message.startswith(f'no space left on device to write {path}: ')
  assert 'it needs 11.0 MB' in message and ' free on that filesystem' in message
  assert '\n' not in message
  assert path.read_bytes() == b'old checkpoint'
  assert sorted(p.name for p in tmp_path.iterdir()) == ['variables.pkl']
  # Without a known size, the bytes written before the failure are a floor.
  with pytest.raises(utils.DiskFull, match='it needs at least 5.0 kB'):
    utils.atomic_write(tmp_path / 'episode.npz', fail_after(5000))
  assert not (tmp_path / 'episode.npz.tmp').exists()


def test_other_errors_pass_through_and_leave_no_temp(tmp_path):
  path = tmp_path / 'config.yaml'
  with pytest.raises(OSError) as info:
    utils.atomic_write(path, fail_after(10, errno.EIO))
  assert (info.value.errno == errno.EIO
          and not isinstance(info.value, utils.DiskFull))
  with pytest.raises(KeyboardInterrupt):
    utils.atomic_write(
        path, lambda f: (_ for _ in ()).throw(KeyboardInterrupt()))
  assert list(tmp_path.iterdir()) == []


def test_the_checkpoint_config_and_episode_writers_use_it(
    tmp_path, monkeypatch):
  import numpy as np
  import tensorflow as tf
  from common import config as config_lib
  from common import logger as logger_lib
  from common import replay as replay_lib
  from common import tfutils
  written = []
  real = utils.atomic_write
  monkeypatch.setattr(utils, 'atomic_write', lambda path, *a, **k: (
      written.append(pathlib.Path(path).name), real(path, *a, **k))[1])
  module = tf.Module()
  module.weight = tf.Variable(tf.ones([3]))
  tfutils.save_checkpoint(module, tmp_path / 'variables.pkl')
  config_lib.Config({'a': 1}).save(tmp_path / 'config.yaml')
  episode = {'action': np.zeros((4, 2), np.float32),
             'reward': np.zeros(4, np.float32)}
  name = replay_lib.save_episode(tmp_path, episode).name
  assert written == ['variables.pkl', 'config.yaml', name]
  with open(tmp_path / 'variables.pkl', 'rb') as f:
    assert pickle.load(f)['weight'].tolist() == [1, 1, 1]
  # metrics.jsonl is appended to, not replaced: a full disk there is named too.
  output = logger_lib.JSONLOutput(tmp_path)
  def full(*args, **kwargs):
    raise OSError(errno.ENOSPC, 'No space left on device')
  monkeypatch.setattr(os, 'fsync', full)
  with pytest.raises(utils.DiskFull, match='metrics.jsonl: it needs'):
    output(4, [('eval_return', 1.0)])
