"""Episode replay: stores finished episodes on disk and in memory, serves
chunks.

An episode is a dict of numpy arrays stacked over time with T+1 steps (the
first step is the reset observation, its action is zeros). Its length, as in
the original, is T = steps - 1; capacity and stats count this length.

Files are `<timestamp>-<uuid hex>-<length>.npz` (compressed), so sorting file
names sorts episodes by time. TensorFlow is imported only by `dataset()`.
"""

import collections
import datetime
import mmap
import pathlib
import threading
import uuid
import warnings
import zipfile

import numpy as np

from common import utils

# zlib level of the saved episodes: level 1 is ~3x faster than numpy's default
# 6 on Atari frames, so saving a 27k-step episode never stalls training long.
COMPRESS_LEVEL = 1
# Stored arrays at least this large get their own memory map (see own_pages).
PAGE_BACKED_BYTES = 1 << 16
WATCH_EVERY = 10  # Batches between two looks for new files (Replay watch).


class Replay:

  def __init__(
      self, directory, capacity=0, ongoing=False, minlen=1, maxlen=0,
      prioritize_ends=False, seed=0, watch=False):
    if minlen < 1:
      raise ValueError(f'Replay minlen must be at least 1, got {minlen}.')
    if maxlen and maxlen < minlen:
      raise ValueError(
          f'Replay maxlen ({maxlen}) must be 0 (whole episodes) or at least '
          f'minlen ({minlen}).')
    self._directory = pathlib.Path(directory).expanduser()
    self._directory.mkdir(parents=True, exist_ok=True)
    self._capacity = int(capacity)
    self._ongoing = ongoing
    self._minlen = int(minlen)
    self._maxlen = int(maxlen)
    self._prioritize_ends = prioritize_ends
    self._rng = np.random.default_rng(seed)
    # The dataset generator runs in a tf.data thread; it reads what we write.
    self._lock = threading.Lock()
    # filename -> episode, oldest first (dicts keep insertion order).
    self._episodes = load_episodes(self._directory, self._capacity, minlen)
    # worker -> key -> list of steps; replaced (never cleared) when finished, so
    # a sampler holding the old lists still reads valid data.
    self._ongoing_eps = collections.defaultdict(_new_buffer)
    total_episodes, total_steps = 0, 0
    for filename in self._directory.glob('*.npz'):
      length = _length_from_name(filename)
      if length is not None:
        total_episodes += 1
        total_steps += length
    self._total_episodes = total_episodes
    self._total_steps = total_steps
    self._loaded_episodes = len(self._episodes)
    self._loaded_steps = sum(eplen(x) for x in self._episodes.values())
    # watch: another process writes the episodes (multi-worker training);
    # the dataset loads the new files every WATCH_EVERY batches.
    self._watch = watch
    self._seen = {str(f) for f in self._directory.glob('*.npz')}

  def refresh(self):
    """Loads the episode files that appeared in the directory since (written
    by another process); returns how many."""
    new = sorted(str(f) for f in self._directory.glob('*.npz')
                 if str(f) not in self._seen)
    added = 0
    for filename in new:
      self._seen.add(filename)
      length = _length_from_name(filename)
      if length is None or length < self._minlen:
        continue
      episode = _read_episode(filename, length)
      if episode is None:
        continue
      with self._lock:
        self._episodes[filename] = episode
        self._total_steps += length
        self._loaded_steps += length
        self._total_episodes += 1
        self._loaded_episodes += 1
        self._enforce_capacity()
      added += 1
    return added

  @property
  def stats(self):
    return {
        'total_steps': self._total_steps,
        'total_episodes': self._total_episodes,
        'loaded_steps': self._loaded_steps,
        'loaded_episodes': self._loaded_episodes,
    }

  def add_step(self, transition, worker=0):
    with self._lock:
      episode = self._ongoing_eps[worker]
      for key, value in transition.items():
        episode[key].append(np.array(value))  # Copy: envs may reuse buffers.
      if transition['is_last']:
        self._ongoing_eps[worker] = _new_buffer()
    if transition['is_last']:
      self.add_episode(episode)

  def save_ongoing(self):
    """Stores the episodes in progress as they are (ending without is_last),
    however short, so that the stored steps equal the steps taken; for a
    clean stop. Returns the steps stored."""
    with self._lock:
      ongoing = [ep for ep in self._ongoing_eps.values()
                 if min((len(v) for v in ep.values()), default=0) > 1]
      self._ongoing_eps.clear()
    for episode in ongoing:
      steps = min(len(v) for v in episode.values())
      self.add_episode({k: v[:steps] for k, v in episode.items()}, force=True)
    return sum(min(len(v) for v in ep.values()) - 1 for ep in ongoing)

  def add_episode(self, episode, force=False):
    """Stores a finished episode; one shorter than minlen only with `force`
    (it is then counted but not sampled)."""
    episode = {key: own_pages(convert(value)) for key, value in episode.items()}
    length = eplen(episode)
    if force and length < self._minlen:
      _check_episode(episode, length)
      save_episode(self._directory, episode)
      with self._lock:
        self._total_steps += length
        self._total_episodes += 1
      return
    if length < self._minlen:
      print(f'Skipping short episode of length {length} (replay minlen '
            f'{self._minlen}).')
      return
    _check_episode(episode, length)
    filename = save_episode(self._directory, episode)
    with self._lock:
      self._episodes[str(filename)] = episode
      self._total_steps += length
      self._loaded_steps += length
      self._total_episodes += 1
      self._loaded_episodes += 1
      self._enforce_capacity()

  def dataset(self, batch, length, prefetch=4):
    """Batches of chunks of `length` steps: dicts of [batch, length, ...].

    Row b+1 of a batch continues the stream of sequences where row b ends, as
    batching consecutive chunks of the original did. `prefetch` batches are
    sampled ahead in a thread of tf.data's; with 0 each batch is sampled when
    it is asked for, from the episodes stored by then (reproducible runs).
    """
    import tensorflow as tf
    with self._lock:
      episodes = self._sampleable()
    if not episodes:
      raise ValueError(
          f'Replay in {self._directory} has no episode of at least '
          f'{self._minlen} steps to sample from; fill it before dataset().')
    example = episodes[0][0]
    signature = {}
    for key, value in example.items():
      if key.startswith('log_'):
        continue
      value = convert(value[:1])
      signature[key] = tf.TensorSpec(
          (batch, length) + value.shape[1:], value.dtype)
    signature['is_first'] = tf.TensorSpec((batch, length), tf.bool)
    # The generator yields whole batches: 2-3x faster than tf.data's batch(),
    # which copies chunk by chunk.
    dataset = tf.data.Dataset.from_generator(
        lambda: self._generate_batches(batch, length, list(signature)),
        output_signature=signature)
    return dataset.prefetch(prefetch) if prefetch else dataset

  def _generate_batches(self, batch, length, keys):
    # Sequences are laid end to end and cut into chunks of `length`; a chunk
    # may span the end of one sequence and the start of the next. `carry` is
    # the unused rest of the last sequence of the previous batch.
    carry = None
    batches = 0
    while True:
      if self._watch and batches % WATCH_EVERY == 0:
        self.refresh()
      batches += 1
      with self._lock:
        episodes = self._sampleable()
      if not episodes:
        raise ValueError(
            f'Replay in {self._directory} has no episode of at least '
            f'{self._minlen} steps left to sample from.')
      needed = batch * length
      sequences = [carry] if carry else []
      have = carry[3] - carry[2] if carry else 0
      while have < needed:
        drawn = self._sample_sequences(episodes, needed - have)
        sequences += drawn
        have += sum(stop - start for _, _, start, stop in drawn)
      # The last sequence may reach past this draw; keep its rest for the next.
      data, first, start, stop = sequences[-1]
      cut = stop - (have - needed)
      carry = (data, False, cut, stop) if cut < stop else None
      sequences[-1] = (data, first, start, cut)
      steps = self._gather(sequences, keys, needed)
      yield {
          key: value.reshape((batch, length) + value.shape[1:])
          for key, value in steps.items()}

  def _sampleable(self):
    # List of (episode, number of steps T+1); call with the lock held.
    episodes = [(x, len(x['action'])) for x in self._episodes.values()]
    if self._ongoing:
      for episode in self._ongoing_eps.values():
        steps = min((len(v) for v in episode.values()), default=0)
        if steps - 1 >= self._minlen:
          episodes.append((episode, steps))
    return episodes

  def _sample_sequences(self, episodes, needed):
    """Draws sequences as the original: returns
    (episode, is_new, start, stop)."""
    count = max(1, -(-needed // self._minlen))  # Enough even if all are short.
    which = self._rng.integers(len(episodes), size=count)
    total = np.array([steps for _, steps in episodes])[which]
    length = np.minimum(total, self._maxlen) if self._maxlen else total
    # Random shortening so sequences of equal-length episodes do not all end
    # at the same place in the chunks.
    length = np.maximum(self._minlen, length - self._rng.integers(
        self._minlen, size=count))
    upper = total - length + 1
    if self._prioritize_ends:
      upper = upper + self._minlen
    start = np.minimum(self._rng.integers(upper), total - length)
    sequences = []
    drawn = 0
    for i, a, n in zip(which, start, length):
      sequences.append((episodes[i][0], True, int(a), int(a + n)))
      drawn += n
      if drawn >= needed:
        break
    return sequences

  def _gather(self, sequences, keys, steps):
    out = {}
    for key in keys:
      out[key] = None
      pos = 0
      for data, _, start, stop in sequences:
        value = data[key][start:stop]
        if isinstance(value, list):
          value = convert(value)
        if out[key] is None:
          out[key] = np.empty((steps,) + value.shape[1:], value.dtype)
        out[key][pos:pos + len(value)] = value
        pos += len(value)
    # Every sampled sequence starts with is_first so the RSSM resets there.
    pos = 0
    for _, new, start, stop in sequences:
      out['is_first'][pos] |= new
      pos += stop - start
    return out

  def _enforce_capacity(self):
    # Call with the lock held. Keeps at least the newest episode.
    if not self._capacity:
      return
    while self._loaded_episodes > 1 and self._loaded_steps > self._capacity:
      oldest = next(iter(self._episodes))
      self._loaded_steps -= eplen(self._episodes.pop(oldest))
      self._loaded_episodes -= 1


def save_episode(directory, episode):
  """Writes a compressed .npz atomically (temp name, then rename); returns
  path."""
  directory = pathlib.Path(directory).expanduser()
  timestamp = datetime.datetime.now().strftime('%Y%m%dT%H%M%S%f')
  identifier = uuid.uuid4().hex
  filename = directory / f'{timestamp}-{identifier}-{eplen(episode)}.npz'
  def write(f):
    with zipfile.ZipFile(
        f, 'w', zipfile.ZIP_DEFLATED, compresslevel=COMPRESS_LEVEL) as zf:
      for key, value in episode.items():
        with zf.open(f'{key}.npy', 'w', force_zip64=True) as member:
          np.lib.format.write_array(
              member, np.asanyarray(value), allow_pickle=False)
  # Via <name>.npz.tmp, which loaders never read.
  utils.atomic_write(filename, write)
  return filename


def load_episodes(directory, capacity=None, minlen=1):
  """Newest episodes that fit `capacity` steps (at least one), oldest first.

  Returns a dict filename -> episode. Files that cannot be read are skipped
  with a warning naming them.
  """
  directory = pathlib.Path(directory).expanduser()
  filenames = []
  for filename in sorted(directory.glob('*.npz')):
    length = _length_from_name(filename)
    if length is None:
      warnings.warn(
          f'Skipping replay file {filename}: name is not '
          f'<timestamp>-<id>-<length>.npz.')
    elif length >= minlen:
      filenames.append((filename, length))
  episodes = []
  steps = 0
  for filename, length in reversed(filenames):
    if capacity and episodes and steps + length > capacity:
      break
    episode = _read_episode(filename, length)
    if episode is None:
      continue
    episodes.append((str(filename), episode))
    steps += length
  return dict(reversed(episodes))


def _read_episode(filename, length):
  """The episode in a file, or None (with a warning naming it) if unreadable."""
  try:
    with np.load(filename, allow_pickle=False) as data:
      episode = {key: own_pages(data[key]) for key in data.keys()}
    _check_episode(episode, length)
  except Exception as e:
    warnings.warn(f'Skipping unreadable replay file {filename}: {e}')
    return None
  return episode


def convert(value):
  """Stacks steps and casts to the stored dtypes
  (float32, int32, uint8, bool)."""
  value = np.asarray(value)
  if np.issubdtype(value.dtype, np.floating):
    return value.astype(np.float32, copy=False)
  if np.issubdtype(value.dtype, np.signedinteger):
    return value.astype(np.int32, copy=False)
  return value


def own_pages(value):
  """Copy of a large array in its own anonymous memory map.

  Freeing it (eviction) returns exactly its pages to the system; from the
  malloc heap, the holes that evicted episodes leave cost 10-15% extra RSS.
  """
  if value.nbytes < PAGE_BACKED_BYTES:
    return value.copy()  # Never alias the caller's array.
  pages = mmap.mmap(-1, value.nbytes)
  array = np.frombuffer(pages, value.dtype, value.size).reshape(value.shape)
  array[...] = value
  return array


def eplen(episode):
  return len(episode['action']) - 1


def _new_buffer():
  return collections.defaultdict(list)


def _length_from_name(filename):
  try:
    return int(pathlib.Path(filename).stem.rsplit('-', 1)[1])
  except (IndexError, ValueError):
    return None


def _check_episode(episode, length):
  # Every key must hold length+1 steps, as the action does.
  if 'action' not in episode:
    raise ValueError('episode has no action key')
  for key, value in episode.items():
    if value.ndim < 1 or len(value) != length + 1:
      raise ValueError(
          f'episode key {key} has {len(value) if value.ndim else 0} steps, '
          f'expected {length + 1}')
