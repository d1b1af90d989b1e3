"""Speed of DreamerV2 on this machine: prints ONE JSON line of figures.

  # Atari config, batch 16x50, precision 16 and 32
  python3 bench/speed.py
  python3 bench/speed.py --batch 50      # the atari config's own batch
  python3 bench/speed.py --sweep         # update_s over batch, length and deter
  python3 bench/speed.py --deterministic 3  # the cost of --deterministic True
  # tiny sizes, for CI: checks the figures exist
  python3 bench/speed.py --quick
  python3 bench/speed.py --config --rssm.deter 1024   # extra config overrides

Figures (see bench/README.md): update_s (median/min/max of Agent.train calls
after warm-up), compile_s (first call), policy_ms (one env, batch 1),
env_steps_per_s (Atari, random actions), replay_batches_per_s (tf.data),
train_agent_steps_per_s (the real train.py loop after prefill), peak_rss_mb,
replay_rss_mb_per_1m_frames, and the machine.
"""

import argparse
import json
import os
import pathlib
import platform
import resource
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

QUICK = ['--rssm.deter', '32', '--rssm.hidden', '32', '--rssm.stoch', '4',
         '--rssm.discrete', '4', '--encoder.cnn_depth', '4',
         '--decoder.cnn_depth', '4', '--reward_head.units', '16',
         '--discount_head.units', '16', '--actor.units', '16',
         '--critic.units', '16', '--dataset.length', '10']


def build_agent(argv, seed=0, learner=False):
  """An Agent for the config given by `argv` (with `learner`, in the
  distribute.Learner of its config.distribute) and one synthetic batch of
  Atari-shaped data [B, T, 64, 64, 1] with 18 one-hot actions."""
  from common import config as configlib
  config = configlib.parse(argv)
  import numpy as np
  import tensorflow as tf
  from common import envs
  from common import nets
  from dreamerv2 import agent as agentlib
  import gymnasium as gym
  nets.set_precision(config.precision)
  if config.deterministic:  # As dreamerv2/loop.py does for such a run.
    tf.random.set_seed(seed)
    tf.config.experimental.enable_op_determinism()
  obs_space = {
      'image': gym.spaces.Box(0, 255, (64, 64, 1), np.uint8),
      'reward': gym.spaces.Box(-np.inf, np.inf, (), np.float32),
      'is_first': gym.spaces.Box(0, 1, (), bool),
      'is_last': gym.spaces.Box(0, 1, (), bool),
      'is_terminal': gym.spaces.Box(0, 1, (), bool)}
  from dreamerv2 import distribute
  make = lambda: agentlib.Agent(
      config, obs_space, {'action': envs.OneHotBox(18)})
  if learner:
    agent = distribute.Learner(make, distribute.make_strategy(config))
  else:
    agent = make()
  B, T = config.dataset.batch, config.dataset.length
  rng = np.random.default_rng(seed)
  data = {
      'image': rng.integers(0, 255, (B, T, 64, 64, 1), dtype=np.uint8),
      'action': np.eye(18, dtype=np.float32)[rng.integers(0, 18, (B, T))],
      'reward': rng.normal(size=(B, T)).astype(np.float32),
      'is_first': np.zeros((B, T), bool), 'is_last': np.zeros((B, T), bool),
      'is_terminal': np.zeros((B, T), bool)}
  data['is_first'][:, 0] = True
  return agent, {k: tf.constant(v) for k, v in data.items()}


def sync(metrics):
  """Waits for an update to finish by reading its metrics."""
  return {k: float(v) for k, v in metrics.items()}


def measure_agent(argv, calls):
  """update_s, compile_s, policy_ms and peak RSS for one precision."""
  import numpy as np
  learner, data = build_agent(argv, learner=True)
  agent = learner.agent
  from common import nets
  if learner.strategy:  # Each replica gets its part of the same global batch.
    import tensorflow as tf
    data = next(learner.dataset(lambda size: tf.data.Dataset.from_tensors(
        {k: v[:size] for k, v in data.items()}).repeat(), len(data['image'])))
  start = time.time()
  sync(learner.train(data))
  compile_s = time.time() - start
  sync(learner.train(data))
  times = []
  for _ in range(calls):
    start = time.time()
    sync(learner.train(data))
    times.append(time.time() - start)
  obs = {'image': np.zeros((1, 64, 64, 1), np.uint8),
         'is_first': np.array([True])}
  out, state = agent.policy(obs, None)
  obs['is_first'] = np.array([False])
  for _ in range(10):
    out, state = agent.policy(obs, state)
  policy = []
  for i in range(100):
    obs['is_first'] = np.array([i % 50 == 0])
    start = time.time()
    out, state = agent.policy(obs, state)
    np.asarray(out['action'])
    policy.append(time.time() - start)
  params = sum(int(np.prod(v.shape)) for v in agent.trainable_variables)
  return {
      'update_s': round(float(np.median(times)), 3),
      'update_s_min': round(float(np.min(times)), 3),
      'update_s_max': round(float(np.max(times)), 3),
      'update_calls': calls,
      'compile_s': round(compile_s, 1),
      'policy_ms': round(1000 * float(np.median(policy)), 2),
      'params': params,
      'compute_dtype': nets.compute_dtype().name,
      'peak_rss_mb': round(
          resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
  }


def measure_peak(repeats=20, rounds=3):
  """This machine's TensorFlow throughput (GFLOP/s) per dtype: a 2048^3
  matmul, the GRU's matmul of the Atari config ([800, 1200] @ [1200, 1800]),
  the encoder's second conv ([800, 31, 31, 48] -> 96 channels, k4 s2) and
  the decoder's third transposed conv ([800, 13, 13, 96] -> 30x30x48, k6 s2).
  `matmul` (the larger of the two matmuls) is the peak the floor uses. Each
  rate is the best of `rounds` rounds of `repeats` calls."""
  import tensorflow as tf
  shapes = {
      'matmul_2048': ([2048, 2048], [2048, 2048], 2 * 2048 ** 3),
      'matmul_gru': ([800, 1200], [1200, 1800], 2 * 800 * 1200 * 1800),
      'conv_encoder': ([800, 31, 31, 48], [4, 4, 48, 96],
                       2 * 800 * 14 * 14 * 16 * 48 * 96),
      'conv_decoder': ([800, 13, 13, 96], [6, 6, 48, 96],
                       2 * 800 * 13 * 13 * 36 * 96 * 48),
  }
  result = {}
  for dtype in (tf.bfloat16, tf.float32):
    rates = {}
    for name, (a, b, flops) in shapes.items():
      x = tf.cast(tf.random.normal(a), dtype)
      w = tf.cast(tf.random.normal(b) * 0.01, dtype)
      if name.startswith('matmul'):
        fn = tf.function(lambda x, w: tf.matmul(x, w))
      elif name == 'conv_encoder':
        fn = tf.function(lambda x, w: tf.nn.conv2d(x, w, 2, 'VALID'))
      else:
        fn = tf.function(lambda x, w: tf.nn.conv2d_transpose(
            x, w, [800, 30, 30, 48], 2, 'VALID'))
      fn(x, w).numpy()
      best = float('inf')
      for _ in range(rounds):  # The best round: the machine may be shared.
        start = time.time()
        for _ in range(repeats):
          y = fn(x, w)
        y.numpy()
        best = min(best, (time.time() - start) / repeats)
      rates[name] = round(flops / best / 1e9, 1)
    rates['matmul'] = max(rates['matmul_2048'], rates['matmul_gru'])
    result['bfloat16' if dtype == tf.bfloat16 else 'float32'] = rates
  return result


def floors(config, peak, update_s):
  """The update's FLOPs (bench/flops.py), its floor (all of them at the matmul
  peak) and update_s / floor, per precision."""
  from bench import flops as flopslib
  counted = flopslib.update_flops(config)
  result = {'update_gflop': round(counted['total'] / 1e9, 1),
            'world_model_gflop': round(counted['world_model'] / 1e9, 1),
            'imagination_gflop': round(counted['imagination'] / 1e9, 1)}
  for precision, dtype in ((16, 'bfloat16'), (32, 'float32')):
    floor = counted['total'] / (peak[dtype]['matmul'] * 1e9)
    result[f'floor{precision}_s'] = round(floor, 3)
    if update_s.get(precision):
      result[f'ratio{precision}'] = round(update_s[precision] / floor, 3)
  return result


def measure_env(steps):
  import numpy as np
  from common import envs
  env = envs.make(
      'atari_pong', 'train', action_repeat=4, time_limit=27000, seed=0)
  rng = np.random.default_rng(0)
  n = env.act_space['action'].shape[0]
  env.reset()
  start = time.time()
  for _ in range(steps):
    obs = env.step({'action': np.eye(n, dtype=np.float32)[rng.integers(n)]})
    if obs['is_last']:
      env.reset()
  seconds = time.time() - start
  env.close()
  return round(steps / seconds, 1)


def measure_replay(batch, length, batches):
  """Batches per second drawn through tf.data from a replay of synthetic
  Atari-sized episodes."""
  import numpy as np
  from common import replay as replaylib
  rng = np.random.default_rng(0)
  with tempfile.TemporaryDirectory() as directory:
    replay = replaylib.Replay(directory, capacity=0, minlen=50, maxlen=50,
                              prioritize_ends=True)
    for _ in range(20):
      T = 1000
      episode = {
          'image': rng.integers(0, 255, (T + 1, 64, 64, 1), dtype=np.uint8),
          'action': np.eye(18, dtype=np.float32)[rng.integers(0, 18, T + 1)],
          'reward': rng.normal(size=T + 1).astype(np.float32),
          'is_first': np.eye(1, T + 1, 0, dtype=bool)[0],
          'is_last': np.eye(1, T + 1, T, dtype=bool)[0],
          'is_terminal': np.eye(1, T + 1, T, dtype=bool)[0]}
      replay.add_episode(episode)
    iterator = iter(replay.dataset(batch, length))
    next(iterator)
    start = time.time()
    for _ in range(batches):
      next(iterator)
    return round(batches / (time.time() - start), 1)


def measure_loop(argv, steps, prefill):
  """Agent steps per second of the real train.py loop after prefill, from
  the loop's own `fps` metric (env frames / s, divided by action repeat)."""
  with tempfile.TemporaryDirectory() as logdir:
    cmd = [sys.executable, str(ROOT / 'dreamerv2' / 'train.py'),
           '--logdir', logdir,
           '--configs', 'defaults', 'atari', '--prefill', str(prefill),
           '--steps', str(prefill + steps), '--log_every', str(steps // 2),
           '--eval_every', str(10 * steps), '--train_every', '16'] + argv
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
      return {'train_agent_steps_per_s': None, 'loop_error': proc.stderr[-500:]}
    fps = []
    for line in open(os.path.join(logdir, 'metrics.jsonl')):
      record = json.loads(line)
      if 'fps' in record and record['step'] > prefill * 4:
        fps.append(record['fps'])
    if not fps:
      return {'train_agent_steps_per_s': None, 'loop_error': 'no fps logged'}
    return {'train_agent_steps_per_s': round(fps[-1] / 4, 2)}


def machine():
  import tensorflow as tf
  flags = (open('/proc/cpuinfo').read() if os.path.exists('/proc/cpuinfo')
           else '')
  return {
      'cores': os.cpu_count(), 'python': platform.python_version(),
      'tensorflow': tf.__version__,
      'gpus': len(tf.config.list_physical_devices('GPU')),
      'onednn': os.environ.get('TF_ENABLE_ONEDNN_OPTS', '1') != '0',
      'amx_bf16': 'amx_bf16' in flags, 'avx512_bf16': 'avx512_bf16' in flags,
      'date': time.strftime('%Y-%m-%d'),
  }


def run_child(argv, calls, quick=False):
  """Runs `measure_agent` (or, for ['--_peak'], `measure_peak`) in a fresh
  process, so that each measurement starts from a clean TensorFlow."""
  if argv == ['--_peak']:
    cmd = [sys.executable, __file__, '--_peak'] + (['--quick'] if quick else [])
  else:
    cmd = [sys.executable, __file__, '--_child', str(calls), '--config'] + argv
  proc = subprocess.run(cmd, capture_output=True, text=True)
  lines = [l for l in proc.stdout.splitlines() if l.startswith('{')]
  if proc.returncode != 0 or not lines:
    raise SystemExit(f'measurement failed for {argv}:\n{proc.stderr[-2000:]}')
  return json.loads(lines[-1])


def run_pair(flags, calls, first, second):
  """Two settings of the same update, each (name, extra flags) in a child:
  their update and compile times and second / first."""
  (a, a_flags), (b, b_flags) = first, second
  one = run_child(flags + a_flags, calls)
  two = run_child(flags + b_flags, calls)
  return {f'{a}_update_s': one['update_s'], f'{b}_update_s': two['update_s'],
          f'{a}_compile_s': one['compile_s'],
          f'{b}_compile_s': two['compile_s'],
          f'{b}_over_{a}': round(two['update_s'] / one['update_s'], 3)}


def main():
  parser = argparse.ArgumentParser(
      description='DreamerV2 speed benchmark (one JSON line).')
  parser.add_argument('--batch', type=int, default=16)
  parser.add_argument('--length', type=int, default=50)
  parser.add_argument('--steps', type=int, default=10,
                      help='update calls measured')
  parser.add_argument('--loop_steps', type=int, default=320)
  parser.add_argument('--quick', action='store_true')
  parser.add_argument('--sweep', action='store_true')
  parser.add_argument('--distribute', action='store_true',
                      help='update_s on one device and on 2 logical CPU '
                           'devices')
  parser.add_argument('--xla', action='store_true',
                      help='time the update under XLA against the graph '
                           'update (precision 16 and 32)')
  parser.add_argument('--deterministic', type=int, default=0, metavar='ROUNDS',
                      help='the update with TensorFlow\'s op determinism '
                           '(--deterministic True) against without, in '
                           'ROUNDS interleaved rounds, precision 16')
  parser.add_argument('--_child', type=int, default=0, help=argparse.SUPPRESS)
  parser.add_argument('--_peak', action='store_true', help=argparse.SUPPRESS)
  parser.add_argument('--config', nargs=argparse.REMAINDER, default=[])
  args = parser.parse_args()
  base = ['--configs', 'defaults', 'atari']
  if args._child:
    print(json.dumps(measure_agent(args.config, args._child)))
    return
  if args._peak:
    print(json.dumps(measure_peak(1, 1) if args.quick else measure_peak()))
    return
  extra = list(args.config) + (QUICK if args.quick else [])
  calls = 2 if args.quick else args.steps
  size = ['--dataset.batch', str(4 if args.quick else args.batch)]
  if not args.quick:
    size += ['--dataset.length', str(args.length)]
  result = {'config': ' '.join(base + size + extra), 'batch': int(size[1]),
            'length': 10 if args.quick else args.length}
  if args.distribute:
    # The cost of distribution here: one device against 2 logical CPU devices
    # that share the same cores, at the same global batch, precision 16.
    result['distribute'] = run_pair(
        base + size + extra + ['--precision', '16'], calls, ('none', []),
        ('mirrored2', ['--distribute.strategy', 'mirrored',
                       '--distribute.cpu_devices', '2']))
    result['machine'] = machine()
    print(json.dumps(result))
    return
  if args.deterministic:
    # Interleaved rounds, each a pair of children: the ratio of the same
    # round is what the machine's drift cannot move.
    rounds = [run_pair(
        base + size + extra + ['--precision', '16'], calls,
        ('default', ['--deterministic', 'False']),
        ('deterministic', ['--deterministic', 'True']))
        for _ in range(args.deterministic)]
    ratios = sorted(r['deterministic_over_default'] for r in rounds)
    result['deterministic'] = {
        'rounds': rounds,
        'deterministic_over_default': ratios[len(ratios) // 2]}
    result['machine'] = machine()
    print(json.dumps(result))
    return
  if args.xla:
    # XLA against the graph update, both precisions, in the same run.
    for precision in (16, 32):
      result[f'xla{precision}'] = run_pair(
          base + size + extra + ['--precision', str(precision)], calls,
          ('graph', ['--xla', 'False']), ('xla', ['--xla', 'True']))
    result['machine'] = machine()
    print(json.dumps(result))
    return
  if args.sweep:
    sweep = {}
    # One factor at a time around batch 16, length 50, deter 600.
    for name, change in [
        ('batch8', {'dataset.batch': 8}), ('batch16', {}),
        ('batch32', {'dataset.batch': 32}),
        ('length25', {'dataset.length': 25}),
        ('deter200', {'rssm.deter': 200, 'rssm.hidden': 200}),
        ('deter1024', {'rssm.deter': 1024, 'rssm.hidden': 1024})]:
      flags = {'dataset.batch': 16, 'dataset.length': 50, **change}
      flags = [x for key, value in flags.items()
               for x in (f'--{key}', str(value))]
      out = run_child(base + flags + extra, calls)
      sweep[name] = out['update_s']
    result['sweep_update_s'] = sweep
    result['machine'] = machine()
    print(json.dumps(result))
    return
  result['peak_gflops'] = run_child(['--_peak'], 0, quick=args.quick)
  from common import config as configlib
  for precision in (16, 32):
    out = run_child(
        base + size + extra + ['--precision', str(precision)], calls)
    result[f'precision{precision}'] = out
  result.update(floors(
      configlib.parse(base + size + extra), result['peak_gflops'],
      {p: result[f'precision{p}']['update_s'] for p in (16, 32)}))
  if not args.quick and args.batch != 50:
    # The atari config's own batch 50 x 50 beside it (fewer calls: 3x the work).
    big = (base + ['--dataset.batch', '50', '--dataset.length',
                   str(args.length)] + extra)
    batch50 = {p: run_child(big + ['--precision', str(p)], 3) for p in (16, 32)}
    fifty = floors(configlib.parse(big), result['peak_gflops'],
                   {p: batch50[p]['update_s'] for p in (16, 32)})
    result['batch50'] = {
        **{f'update{p}_s': batch50[p]['update_s'] for p in (16, 32)},
        **{f'compile{p}_s': batch50[p]['compile_s'] for p in (16, 32)}, **fifty}
  result['env_steps_per_s'] = measure_env(200 if args.quick else 5000)
  result['replay_batches_per_s'] = measure_replay(
      int(size[1]), result['length'], 10 if args.quick else 100)
  loop_steps = 64 if args.quick else args.loop_steps
  loop_flags = size + extra + ['--precision', '16']
  if args.quick:
    # Prefill lasts at least one episode: a Pong game (~1000 steps) would
    # fill all quick steps and leave no training to time.
    loop_flags += ['--time_limit', '100']
  result.update(
      measure_loop(loop_flags, loop_steps, 200 if args.quick else 1000))
  replay = subprocess.run(
      [sys.executable, str(ROOT / 'bench' / 'replay_memory.py')] +
      (['--quick'] if args.quick else []), capture_output=True, text=True)
  lines = [l for l in replay.stdout.splitlines() if l.startswith('{')]
  result['replay_rss_mb_per_1m_frames'] = (
      json.loads(lines[-1]).get('rss_mb_per_1m_frames') if lines else None)
  result['machine'] = machine()
  print(json.dumps(result))


if __name__ == '__main__':
  main()
