"""Replay: storage, eviction, reload, and the chunks the world model trains
on."""

import os
import warnings

import numpy as np
import pytest

from common import replay as replay_lib


def make_episode(length, ident=0, image=(8, 8, 1), actions=3):
  """length+1 steps; reward = ident, `step` = index of the step in the
  episode."""
  steps = length + 1
  is_last = np.zeros(steps, bool)
  is_last[-1] = True
  return {
      'image': np.full((steps,) + image, ident % 256, np.uint8),
      'action': np.eye(actions, dtype=np.float32)[np.arange(steps) % actions],
      'reward': np.full(steps, ident, np.float32),
      'step': np.arange(steps, dtype=np.int32),
      'is_first': np.arange(steps) == 0,
      'is_last': is_last,
      'is_terminal': is_last.copy(),
  }


def sample_steps(replay, batch, length, batches):
  """Consecutive chunks of the dataset laid end to end: dict of [N] arrays."""
  dataset = iter(replay.dataset(batch, length))
  chunks = [next(dataset) for _ in range(batches)]
  return {
      key: np.concatenate([c[key].numpy().reshape(
          (batch * length,) + tuple(c[key].shape[2:])) for c in chunks])
      for key in chunks[0]}


def episode_files(directory):
  return sorted(p.name for p in directory.glob('*.npz'))


def test_capacity_evicts_oldest_episodes_and_keeps_them_on_disk(tmp_path):
  replay = replay_lib.Replay(tmp_path, capacity=250)
  for ident in range(4):
    replay.add_episode(make_episode(100, ident))
  assert replay.stats == {
      'total_steps': 400, 'total_episodes': 4,
      'loaded_steps': 200, 'loaded_episodes': 2}
  assert len(episode_files(tmp_path)) == 4
  steps = sample_steps(replay, 8, 20, 10)
  assert set(np.unique(steps['reward'])) == {2.0, 3.0}


def test_chunks_have_batch_and_length_shapes_and_stored_dtypes(tmp_path):
  replay = replay_lib.Replay(tmp_path, minlen=50, maxlen=50)
  episode = make_episode(120, image=(64, 64, 1), actions=18)
  episode['log_score'] = np.zeros(121, np.float32)
  replay.add_episode(episode)
  batch = next(iter(replay.dataset(16, 50)))
  shapes = {key: (tuple(value.shape), value.dtype.name)
            for key, value in batch.items()}
  assert shapes == {
      'image': ((16, 50, 64, 64, 1), 'uint8'),
      'action': ((16, 50, 18), 'float32'),
      'reward': ((16, 50), 'float32'),
      'step': ((16, 50), 'int32'),
      'is_first': ((16, 50), 'bool'),
      'is_last': ((16, 50), 'bool'),
      'is_terminal': ((16, 50), 'bool'),
  }


def test_every_sampled_sequence_starts_with_is_first(tmp_path):
  # Sequences of exactly 10 steps laid end to end across chunks of 25.
  replay = replay_lib.Replay(tmp_path, minlen=10, maxlen=10, seed=1)
  for ident in range(3):
    replay.add_episode(make_episode(60, ident))
  steps = sample_steps(replay, 4, 25, 10)  # 1000 steps = 100 sequences.
  np.testing.assert_array_equal(
      np.flatnonzero(steps['is_first']), np.arange(0, 1000, 10))
  # Inside a sequence, steps are consecutive steps of one episode.
  inside = ~steps['is_first'][1:]
  assert (np.diff(steps['step'])[inside] == 1).all()
  assert (np.diff(steps['reward'])[inside] == 0).all()


def test_prioritize_ends_makes_final_steps_appear_ten_times_as_often(tmp_path):
  # 101-step episodes, sequences of 10 = chunks of 10. The last step is in a
  # sequence with chance 1/92 uniformly, (1 + minlen)/(92 + minlen) = 11/102
  # with prioritize_ends.
  fractions = {}
  for prioritize in (False, True):
    directory = tmp_path / str(prioritize)
    replay = replay_lib.Replay(
        directory, minlen=10, maxlen=10, prioritize_ends=prioritize, seed=2)
    for ident in range(5):
      replay.add_episode(make_episode(100, ident))
    steps = sample_steps(replay, 100, 10, 30)  # 3000 chunks.
    fractions[prioritize] = steps['is_last'].reshape(-1, 10).any(1).mean()
  assert 0.004 < fractions[False] < 0.02, fractions  # 1/92 = 0.011
  assert 0.09 < fractions[True] < 0.13, fractions  # 11/102 = 0.108
  assert fractions[True] > 5 * fractions[False]


def test_restart_reloads_newest_episodes_that_fit_capacity(tmp_path):
  replay = replay_lib.Replay(tmp_path)
  for ident in range(5):
    replay.add_episode(make_episode(100, ident))
  restarted = replay_lib.Replay(tmp_path, capacity=250)
  assert restarted.stats == {
      'total_steps': 500, 'total_episodes': 5,
      'loaded_steps': 200, 'loaded_episodes': 2}
  loaded = replay_lib.load_episodes(tmp_path, capacity=250)
  assert [ep['reward'][0] for ep in loaded.values()] == [3.0, 4.0]
  everything = replay_lib.Replay(tmp_path, maxlen=10)
  assert everything.stats['loaded_episodes'] == 5
  assert set(np.unique(sample_steps(everything, 10, 20, 5)['reward'])) == {
      0.0, 1.0, 2.0, 3.0, 4.0}
  original = make_episode(100, 4)
  for key, value in loaded[list(loaded)[-1]].items():
    np.testing.assert_array_equal(value, original[key])
    assert value.dtype == original[key].dtype


def test_truncated_and_corrupt_files_are_skipped_with_a_warning(tmp_path):
  replay = replay_lib.Replay(tmp_path)
  for ident in range(4):
    replay.add_episode(make_episode(30, ident))
  names = episode_files(tmp_path)
  truncated, corrupt = tmp_path / names[1], tmp_path / names[3]
  truncated.write_bytes(truncated.read_bytes()[:truncated.stat().st_size // 2])
  corrupt.write_bytes(b'not a zip file' * 10)
  with pytest.warns(UserWarning) as record:
    restarted = replay_lib.Replay(tmp_path)
  messages = ' '.join(str(w.message) for w in record)
  assert names[1] in messages and names[3] in messages
  assert restarted.stats['loaded_episodes'] == 2
  with pytest.warns(UserWarning, match='Skipping unreadable replay file'):
    loaded = replay_lib.load_episodes(tmp_path)
  assert [ep['reward'][0] for ep in loaded.values()] == [0.0, 2.0]


def test_temp_files_are_ignored(tmp_path):
  replay = replay_lib.Replay(tmp_path)
  path = replay_lib.save_episode(tmp_path, make_episode(30, 1))
  (tmp_path / (path.name + '.tmp')).write_bytes(b'half written')
  (tmp_path / '20990101T000000000000-abc-30.npz.tmp').write_bytes(b'x')
  with warnings.catch_warnings():
    warnings.simplefilter('error')
    restarted = replay_lib.Replay(tmp_path)
  assert restarted.stats['loaded_episodes'] == 1
  assert restarted.stats['total_episodes'] == 1
  del replay


def test_episodes_shorter_than_minlen_are_not_stored(tmp_path):
  replay = replay_lib.Replay(tmp_path, minlen=10)
  replay.add_episode(make_episode(9))
  assert replay.stats['total_episodes'] == 0
  assert episode_files(tmp_path) == []
  replay.add_episode(make_episode(10))
  assert replay.stats['loaded_steps'] == 10
  assert [name.endswith('-10.npz') for name in episode_files(tmp_path)] == [
      True]
  # A restart with a larger minlen does not load the short file.
  assert replay_lib.Replay(tmp_path, minlen=11).stats['loaded_episodes'] == 0


def test_add_step_assembles_one_episode_per_worker(tmp_path):
  replay = replay_lib.Replay(tmp_path)
  episodes = {0: make_episode(12, ident=10), 1: make_episode(15, ident=11)}
  for index in range(16):
    for worker, episode in episodes.items():
      if index < len(episode['action']):
        replay.add_step(
            {key: value[index] for key, value in episode.items()}, worker)
    if index == 12:
      assert replay.stats['total_episodes'] == 1
  assert replay.stats['loaded_steps'] == 27
  loaded = list(replay_lib.load_episodes(tmp_path).values())
  assert [len(ep['action']) for ep in loaded] == [13, 16]
  for got, want in zip(loaded, episodes.values()):
    for key, value in want.items():
      np.testing.assert_array_equal(got[key], value)
      assert got[key].dtype == value.dtype


def test_ongoing_samples_from_episodes_in_progress(tmp_path):
  episode = make_episode(40, ident=7)
  transitions = [{k: v[i] for k, v in episode.items()} for i in range(30)]
  waiting = replay_lib.Replay(tmp_path / 'a', minlen=5, maxlen=10)
  for transition in transitions:
    waiting.add_step(transition)
  with pytest.raises(ValueError, match='no episode of at least 5 steps'):
    waiting.dataset(2, 10)
  ongoing = replay_lib.Replay(
      tmp_path / 'b', minlen=5, maxlen=10, ongoing=True)
  for transition in transitions:
    ongoing.add_step(transition)
  steps = sample_steps(ongoing, 4, 10, 5)
  assert set(np.unique(steps['reward'])) == {7.0}
  assert 20 <= steps['step'].max() <= 29  # Only the 30 steps added so far.
  assert not steps['is_last'].any()
  assert ongoing.stats['total_episodes'] == 0


def test_failed_write_leaves_no_file_under_the_final_name(
    tmp_path, monkeypatch):
  replay = replay_lib.Replay(tmp_path)
  write_array = np.lib.format.write_array

  def fail_midway(member, array, **kwargs):
    if array.dtype == np.uint8:  # Fail after part of the file is written.
      member.write(b'\0' * 1000)
      raise OSError('disk full')
    write_array(member, array, **kwargs)

  monkeypatch.setattr(np.lib.format, 'write_array', fail_midway)
  with pytest.raises(OSError, match='disk full'):
    replay.add_episode(make_episode(30))
  assert os.listdir(tmp_path) == []
  assert replay.stats['total_episodes'] == 0
  monkeypatch.setattr(np.lib.format, 'write_array', write_array)
  replay.add_episode(make_episode(30))
  assert len(episode_files(tmp_path)) == 1


def test_a_watching_replay_loads_what_another_process_writes(tmp_path):
  # Multi-worker: a worker's replay reads the chief's episode files.
  reader = replay_lib.Replay(tmp_path, minlen=5, watch=True)
  assert reader.stats['loaded_episodes'] == 0
  replay_lib.save_episode(tmp_path, make_episode(30, 1))
  replay_lib.save_episode(tmp_path, make_episode(3, 2))  # Under minlen.
  assert reader.refresh() == 1 and reader.refresh() == 0
  assert (reader.stats['loaded_episodes'] == 1
          and reader.stats['loaded_steps'] == 30)
  batches = iter(reader.dataset(2, 5))
  assert next(batches)['reward'].shape == (2, 5)
  replay_lib.save_episode(tmp_path, make_episode(40, 3))
  # The dataset looks again every WATCH_EVERY batches (it prefetches 4).
  for _ in range(2 * replay_lib.WATCH_EVERY + 5):
    next(batches)
  assert reader.stats['loaded_episodes'] == 2
