"""Replay memory, save cost and tf.data throughput on Atari-sized episodes.

Fills a replay through `add_step` (as the driver does) with synthetic episodes
of 64x64x1 uint8 frames, 18-dim one-hot float32 actions, rewards and flags,
past its capacity so that eviction runs, then measures:
  - process RSS growth (VmRSS) against the raw bytes of the stored steps,
  - seconds to save (compress + write) episodes, per 1000 steps,
  - seconds to reload the directory into a new replay, per 1000 steps,
  - batches per second through `replay.dataset` at 16x50 and 50x50.
Prints one JSON line. Example:
  .venv/bin/python bench/replay_memory.py --steps 200000
  # small fill, seconds, for CI
  .venv/bin/python bench/replay_memory.py --quick
"""

import argparse
import gc
import json
import pathlib
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from common import replay as replay_lib  # noqa: E402

FRAMES_PER_STEP = 4  # Atari action repeat: 1M env frames = 250k agent steps.


def rss_mb():
  with open('/proc/self/status') as f:
    for line in f:
      if line.startswith('VmRSS:'):
        return int(line.split()[1]) / 1024
  raise RuntimeError('VmRSS not found in /proc/self/status')


def atari_like_episode(rng, length, actions=18):
  """Episode of length+1 steps: banded background and moving sprites."""
  steps = length + 1
  image = np.empty((steps, 64, 64, 1), np.uint8)
  bands = rng.integers(30, 120, size=8).repeat(8).astype(np.uint8)
  image[:] = bands[None, :, None, None]
  t = np.arange(steps)
  for sprite in range(4):
    ys = (28 + 24 * np.sin(t / rng.uniform(5, 20) + sprite)).astype(int)
    xs = (28 + 24 * np.cos(t / rng.uniform(5, 20) + sprite)).astype(int)
    shade = rng.integers(150, 255)
    for dy in range(4):
      for dx in range(3):
        image[t, ys + dy, xs + dx, 0] = shade
  # A few flickering pixels, as interpolation edges and score digits give.
  flat = image.reshape(-1)
  flicker = rng.integers(flat.size, size=flat.size // 100)
  flat[flicker] = rng.integers(0, 256, size=len(flicker), dtype=np.uint8)
  action = np.zeros((steps, actions), np.float32)
  action[np.arange(1, steps), rng.integers(actions, size=length)] = 1
  reward = np.zeros(steps, np.float32)
  reward[1:] = rng.choice([-1.0, 0.0, 1.0], size=length, p=[.01, .98, .01])
  is_first = np.zeros(steps, bool)
  is_first[0] = True
  is_last = np.zeros(steps, bool)
  is_last[-1] = True
  is_terminal = is_last.copy()
  return {
      'image': image, 'action': action, 'reward': reward,
      'is_first': is_first, 'is_last': is_last, 'is_terminal': is_terminal}


def fill(replay, rng, steps, mean_length):
  added = 0
  while added < steps:
    length = int(rng.integers(mean_length // 2, mean_length * 3 // 2))
    episode = atari_like_episode(rng, length)
    for index in range(length + 1):
      replay.add_step({key: value[index] for key, value in episode.items()})
    added += length
    del episode


def save_seconds_per_1k(directory, episode, repeats=1):
  start = time.perf_counter()
  for _ in range(repeats):
    path = replay_lib.save_episode(directory, episode)
  seconds = (time.perf_counter() - start) / repeats
  size = path.stat().st_size
  path.unlink()
  return seconds, seconds / replay_lib.eplen(episode) * 1000, size


def batches_per_second(replay, batch, length, count):
  dataset = iter(replay.dataset(batch, length))
  for _ in range(10):
    next(dataset)
  start = time.perf_counter()
  for _ in range(count):
    next(dataset)
  return count / (time.perf_counter() - start)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--steps', type=int, default=200000,
                      help='replay capacity in agent steps')
  parser.add_argument('--episode_length', type=int, default=1000)
  parser.add_argument('--batches', type=int, default=200,
                      help='batches timed per throughput figure')
  parser.add_argument('--long_episode', type=int, default=27000,
                      help='steps of the episode whose save is timed')
  parser.add_argument('--quick', action='store_true',
                      help='small sizes: checks that the figures exist')
  args = parser.parse_args()
  if args.quick:
    args.steps, args.episode_length, args.batches = 5000, 200, 20
    args.long_episode = 1000
  long_name = f'{args.long_episode / 1000:g}k'  # save_s_27k_step_episode
  rng = np.random.default_rng(0)

  with tempfile.TemporaryDirectory() as root:
    directory = pathlib.Path(root) / 'train_episodes'
    # Same settings as the Atari config: minlen = maxlen = 50, prioritize ends.
    settings = dict(
        capacity=args.steps, minlen=50, maxlen=50, prioritize_ends=True)
    gc.collect()
    before = rss_mb()
    replay = replay_lib.Replay(directory, **settings)
    # 25% more than the capacity so that the oldest episodes get evicted.
    fill_start = time.perf_counter()
    fill(replay, rng, args.steps * 5 // 4, args.episode_length)
    fill_seconds = time.perf_counter() - fill_start
    gc.collect()
    growth = rss_mb() - before
    # The bench may look inside: the raw bytes of what the replay holds.
    raw = sum(
        value.nbytes for episode in replay._episodes.values()
        for value in episode.values()) / 2 ** 20
    stats = replay.stats

    long_episode = atari_like_episode(rng, args.long_episode)
    raw_long = sum(value.nbytes for value in long_episode.values())
    save_long, save_per_1k, size_long = save_seconds_per_1k(
        directory, long_episode)
    noise = atari_like_episode(rng, min(5000, args.long_episode))
    noise['image'] = rng.integers(0, 256, noise['image'].shape, np.uint8)
    _, save_noise_per_1k, _ = save_seconds_per_1k(directory, noise)
    del long_episode, noise

    fast_16 = batches_per_second(replay, 16, 50, args.batches)
    fast_50 = batches_per_second(replay, 50, 50, args.batches // 2)

    del replay
    gc.collect()
    start = time.perf_counter()
    reloaded = replay_lib.Replay(directory, **settings)
    reload_seconds = time.perf_counter() - start
    assert reloaded.stats['loaded_steps'] == stats['loaded_steps'], (
        reloaded.stats, stats)

  print(json.dumps({
      'raw_mb': round(raw, 1),
      'rss_growth_mb': round(growth, 1),
      'ratio': round(growth / raw, 3),
      'stored_steps': stats['loaded_steps'],
      'stored_episodes': stats['loaded_episodes'],
      'steps_added': stats['total_steps'],
      'rss_mb_per_1m_agent_steps': round(
          growth / stats['loaded_steps'] * 1e6, 1),
      'rss_mb_per_1m_frames': round(
          growth / stats['loaded_steps'] * 1e6 / FRAMES_PER_STEP, 1),
      'frames_per_agent_step': FRAMES_PER_STEP,
      'fill_steps_per_s': round(stats['total_steps'] / fill_seconds),
      f'save_s_{long_name}_step_episode': round(save_long, 3),
      'save_s_per_1k_steps': round(save_per_1k, 4),
      'save_s_per_1k_steps_noise_images': round(save_noise_per_1k, 4),
      f'file_mb_{long_name}_step_episode': round(size_long / 2 ** 20, 2),
      'compression_ratio': round(raw_long / size_long, 1),
      'reload_s_per_1k_steps': round(
          reload_seconds / stats['loaded_steps'] * 1000, 4),
      'batches_per_s_16x50': round(fast_16, 1),
      'batches_per_s_50x50': round(fast_50, 1),
      'compress_level': replay_lib.COMPRESS_LEVEL,
  }))


if __name__ == '__main__':
  main()
