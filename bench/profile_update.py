"""Where the time of one training update goes, by TensorFlow op.

Runs a few `Agent.train` calls on a synthetic Atari-sized batch under the
TensorFlow profiler, reads the trace back and prints one JSON line: the
update time and the ops (by type and by name) that take the most time.

  python3 bench/profile_update.py  # atari config, batch 16x50, precision 16
  python3 bench/profile_update.py --precision 32 --top 30
  # any config overrides
  python3 bench/profile_update.py --config --dataset.batch 50
"""

import argparse
import collections
import glob
import json
import os
import pathlib
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--precision', type=int, default=16)
  parser.add_argument('--batch', type=int, default=16)
  parser.add_argument('--calls', type=int, default=3)
  parser.add_argument('--top', type=int, default=25)
  parser.add_argument('--config', nargs=argparse.REMAINDER, default=[],
                      help='extra config flags, e.g. '
                           '--config --rssm.deter 1024')
  args = parser.parse_args()

  from bench import speed
  agent, data = speed.build_agent(
      ['--configs', 'defaults', 'atari', '--dataset.batch', str(args.batch),
       '--precision', str(args.precision)] + args.config)
  import tensorflow as tf
  speed.sync(agent.train(data))  # Trace and warm up outside the profile.
  speed.sync(agent.train(data))
  with tempfile.TemporaryDirectory(prefix='dreamer_profile_') as logdir:
    tf.profiler.experimental.start(logdir)
    start = time.time()
    for _ in range(args.calls):
      speed.sync(agent.train(data))
    seconds = (time.time() - start) / args.calls
    tf.profiler.experimental.stop()
    by_type, by_name = op_times(logdir)
  total = sum(by_type.values())
  top = lambda d: [
      {'op': k, 'ms_per_update': round(v / args.calls / 1e9, 2),
       'share': round(v / total, 3)}
      for k, v in sorted(d.items(), key=lambda kv: -kv[1])[:args.top]]
  print(json.dumps({
      'update_s': round(seconds, 3), 'precision': args.precision,
      'batch': args.batch,
      'op_ms_per_update': round(total / args.calls / 1e9, 1),
      'top_types': top(by_type), 'top_ops': top(by_name)}))


def op_times(logdir):
  """Sums the durations (ps) of TF op events in the profile, by op type and
  by op name (events named `name:Type` on the executor's compute threads)."""
  from tensorflow.tsl.profiler.protobuf import xplane_pb2
  path = glob.glob(os.path.join(logdir, '**', '*.xplane.pb'), recursive=True)[0]
  space = xplane_pb2.XSpace()
  space.ParseFromString(open(path, 'rb').read())
  by_type = collections.Counter()
  by_name = collections.Counter()
  for plane in space.planes:
    if not plane.name.startswith('/host:CPU'):
      continue
    for line in plane.lines:
      if not line.name.startswith('tf_Compute'):
        continue
      for event in line.events:
        name = plane.event_metadata[event.metadata_id].name
        op_name, _, op_type = name.rpartition(':')
        if not op_name or '::' in name:
          continue  # Executor bookkeeping, not an op.
        by_type[op_type] += event.duration_ps
        by_name[name] += event.duration_ps
  return by_type, by_name


if __name__ == '__main__':
  main()
