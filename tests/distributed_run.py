"""A few updates of a tiny agent, one device or data parallel; writes its
weights and metrics. Run as a script by tests/test_distribute.py (a fresh
process: logical devices and TF_CONFIG must be set before TensorFlow runs).

  python3 tests/distributed_run.py OUT.npz STRATEGY CPU_DEVICES UPDATES \\
      [float16|float16clean|lost_at_sync]

Every run sees the same global batches (seeded), and the latent and action
samples are replaced by their modes: the random draws of two device counts
differ as those of two seeds do, and the test is about the update itself.
With float16 (vector observations only), the second half of the first batch
holds values of 1e4, whose gradient overflows under the loss scale on the
replica that gets it; float16clean leaves them alone. lost_at_sync
(multi_worker): worker 1 exits before the first weight broadcast, which
worker 0 then runs; it prints the one line of PeerLost and exits 1.
"""

import json
import os
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / 'tests'))
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')


def main():
  out, kind, devices, updates = (
      sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
  float16 = any(a.startswith('float16') for a in sys.argv[5:])
  # float16clean: the same batches, unchanged.
  corrupt = 'float16' in sys.argv[5:]
  lost_at_sync = 'lost_at_sync' in sys.argv[5:]
  import numpy as np
  import tensorflow as tf
  from common import dists
  from common import tfutils
  from dreamerv2 import agent as agent_lib
  import dreamer_helpers as H
  dists.OneHot.sample = dists.OneHot.mode
  config = H.tiny_config(**{
      'jit': True, 'distribute.strategy': kind,
      'distribute.cpu_devices': devices,
      'dataset.batch': 4, 'dataset.length': 6, 'slow_target_update': 2,
      'kl.free': 0.05, 'reward_norm.momentum': 0.9,
      'distribute.peer_timeout': 8 if lost_at_sync else 60})
  # float16: vectors only, whose clean batches keep the gradients in range.
  obs = (H.obs_space(vector=5) if float16
         else H.obs_space(image=(64, 64, 1), vector=5))
  act = H.act_space(True, 3)
  tf.random.set_seed(0)
  from dreamerv2 import distribute
  learner = distribute.Learner(
      lambda: agent_lib.Agent(
          config, obs, act, dtype=tf.float16 if float16 else None),
      distribute.make_strategy(config))
  agent, strategy = learner.agent, learner.strategy
  if lost_at_sync:
    if not distribute.is_chief(config):
      os._exit(0)
    try:
      learner.sync()
    except distribute.PeerLost as error:
      print(f'error: {error}.', file=sys.stderr)
      sys.exit(1)
    return
  batches = []
  for i in range(updates):
    batch = {k: v.numpy() for k, v in H.batch(obs, act, 4, 6, seed=10 + i,
                                             terminal_at=(5,)).items()}
    if corrupt and i == 0:
      batch['state'][2:] = 1e4
    batches.append(batch)
  if strategy:
    context_batches = lambda start, size: [
        {k: v[start:start + size] for k, v in b.items()} for b in batches]

    def make(context):
      size = context.get_per_replica_batch_size(4)
      # This pipeline's replicas, in order: each takes its rows of every batch.
      local = context.num_replicas_in_sync // context.num_input_pipelines
      first = context.input_pipeline_id * local
      parts = [context_batches((first + r) * size, size) for r in range(local)]
      rows = [parts[r][i] for i in range(updates) for r in range(local)]
      return tf.data.Dataset.from_tensor_slices(
          {k: np.stack([row[k] for row in rows]) for k in rows[0]})
    data = iter(strategy.distribute_datasets_from_function(make))
  else:
    data = iter([{k: tf.constant(v) for k, v in b.items()} for b in batches])
  metrics = []
  for i in range(updates):
    metrics.append({k: float(v)
                    for k, v in learner.train(next(data), step=i).items()})
  values = {}
  for name, var in tfutils.named_variables(agent).items():
    copies = (strategy.experimental_local_results(var)
              if strategy else [var])
    values[name] = np.stack([np.asarray(c.numpy()) for c in copies])
  np.savez(out, **{f'var:{k}': v for k, v in values.items()},
           metrics=json.dumps(metrics),
           replicas=strategy.num_replicas_in_sync if strategy else 1)


if __name__ == '__main__':
  main()
