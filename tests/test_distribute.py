"""Data-parallel updates on tf.distribute: a distributed update is the same
update. Every run is a fresh process (tests/distributed_run.py, train.py):
logical CPU devices and TF_CONFIG must be set before TensorFlow runs.

The runs replace latent and action samples by their modes (distributed_run)
so that one and two devices compute the same function; their random draws
would differ as two seeds' do. Tolerances: the two compute every sum of the
batch in another order (two halves, then their mean), so float32 results
agree to rounding: measured 1e-5 of a weight's scale after 3 updates, 1e-4
for Adam's moments (sums of gradients that nearly cancel) and metrics.
"""

import json
import os
import pathlib
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

import test_train as T

ROOT = pathlib.Path(__file__).resolve().parent.parent
WEIGHTS_RTOL, SLOTS_RTOL, METRICS_RTOL = 5e-5, 5e-4, 1e-4


def run(tmp_path, name, strategy, devices, updates, *extra, env=None,
        wait=True):
  out = tmp_path / f'{name}.npz'
  command = [sys.executable, 'tests/distributed_run.py', str(out), strategy,
             str(devices), str(updates), *extra]
  process = subprocess.Popen(
      command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
      text=True, env={**os.environ, **(env or {})})
  if not wait:
    return process, out
  _, err = process.communicate(timeout=300)
  assert process.returncode == 0, err[-3000:]
  return load(out)


def load(path):
  data = np.load(path)
  variables = {k[4:]: data[k] for k in data.files if k.startswith('var:')}
  return variables, json.loads(str(data['metrics'])), int(data['replicas'])


def assert_same_update(one, many):
  (single, single_metrics, _), (multi, multi_metrics, replicas) = one, many
  assert replicas == 2 and single.keys() == multi.keys()
  for name, value in single.items():
    copies = multi[name]
    assert len(copies) in (1, 2)
    for copy in copies[1:]:  # The replicas of one process hold equal copies.
      np.testing.assert_array_equal(copy, copies[0], err_msg=name)
    rtol = SLOTS_RTOL if '_opt/' in name else WEIGHTS_RTOL
    scale = np.abs(value[0]).max() if value.dtype.kind == 'f' else 0
    np.testing.assert_allclose(copies[0], value[0], rtol=0,
                               atol=rtol * scale + 1e-9, err_msg=name)
  for ours, theirs in zip(single_metrics, multi_metrics):
    assert ours.keys() == theirs.keys()
    for key, value in ours.items():
      assert theirs[key] == pytest.approx(
          value, rel=METRICS_RTOL, abs=1e-7), key


@pytest.fixture(scope='module')
def one_device(tmp_path_factory):
  # 3 updates with the slow critic copied every 2 (after the first and third).
  return run(tmp_path_factory.mktemp('one'), 'none', 'none', 0, 3)


@pytest.fixture(scope='module')
def mirrored(tmp_path_factory):
  # The same 3 updates over 2 logical CPU devices.
  return run(tmp_path_factory.mktemp('mirrored'), 'mirrored', 'mirrored', 2, 3)


def test_mirrored_over_two_devices_is_the_one_device_update(
    one_device, mirrored):
  assert_same_update(one_device, mirrored)
  variables, metrics, _ = mirrored
  assert metrics[-1]['model_skipped_steps'] == 0
  # The slow critic was copied at updates 1 and 3 on both replicas.
  assert variables['_task_behavior/_updates'].tolist() == [3, 3]
  for replica in (0, 1):
    np.testing.assert_array_equal(
        variables['_task_behavior/_target_critic/head/out/kernel'][replica],
        variables['_task_behavior/critic/head/out/kernel'][replica])


def test_an_overflow_on_one_replica_skips_the_step_on_all(tmp_path):
  # float16 with loss scaling (as on a GPU): the second half of the batch
  # overflows, which only replica 1 sees; the clean batch does not overflow.
  for case, skipped, scale in (('float16', 1, 2.0 ** 14),
                               ('float16clean', 0, 2.0 ** 15)):
    variables, metrics, _ = run(tmp_path, case, 'mirrored', 2, 1, case)
    for opt in ('wm/model_opt',):
      assert variables[f'{opt}/skipped'].tolist() == [skipped] * 2, case
      # A skipped step still counts as Adam's iteration (Keras' loss scaling).
      assert variables[f'{opt}/updates'].tolist() == [1] * 2, case
      assert variables[f'{opt}/loss_scale'].tolist() == [scale] * 2, case
    assert metrics[0]['model_skipped_steps'] == skipped


def free_ports(count):
  sockets = [socket.socket() for _ in range(count)]
  for s in sockets:
    s.bind(('127.0.0.1', 0))
  ports = [s.getsockname()[1] for s in sockets]
  for s in sockets:
    s.close()
  return ports


def tf_config(cluster, index):
  return {'TF_CONFIG': json.dumps(
      {'cluster': cluster, 'task': {'type': 'worker', 'index': index}})}


def test_two_workers_equal_each_other_and_the_mirrored_run(
    one_device, mirrored, tmp_path):
  cluster = {'worker': [f'127.0.0.1:{port}' for port in free_ports(2)]}
  started = [run(tmp_path, f'worker{i}', 'multi_worker', 0, 3,
                 env=tf_config(cluster, i), wait=False) for i in range(2)]
  deadline = time.time() + 300
  try:
    for process, _ in started:
      _, err = process.communicate(timeout=max(1, deadline - time.time()))
      assert process.returncode == 0, err[-3000:]
  finally:
    for process, _ in started:
      if process.poll() is None:
        process.kill()
  workers = [load(out) for _, out in started]
  for name, value in workers[0][0].items():
    np.testing.assert_array_equal(value, workers[1][0][name], err_msg=name)
  assert_same_update(one_device, workers[0])
  for name, value in mirrored[0].items():
    np.testing.assert_allclose(workers[0][0][name][0], value[0], rtol=1e-6,
                               atol=1e-9, err_msg=name)


def test_a_worker_lost_before_the_first_weight_broadcast_is_one_line(
    tmp_path):
  # Worker 1 exits after building the agent; worker 0 (the chief) then runs
  # the broadcast of its weights (Learner.sync), which cannot complete.
  cluster = {'worker': [f'127.0.0.1:{port}' for port in free_ports(2)]}
  started = [run(tmp_path, f'worker{i}', 'multi_worker', 0, 0, 'lost_at_sync',
                 env=tf_config(cluster, i), wait=False) for i in range(2)]
  try:
    outputs = [process.communicate(timeout=240) for process, _ in started]
  finally:
    for process, _ in started:
      if process.poll() is None:
        process.kill()
  chief, err = started[0][0], outputs[0][1]
  errors = [line for line in err.splitlines() if line.startswith('error:')]
  assert chief.returncode == 1 and 'Traceback' not in err, err[-3000:]
  assert len(errors) == 1 and (
      f'worker 1 at {cluster["worker"][1]} of the cluster is gone' in (
          errors[0])), err[-3000:]


def test_train_py_mirrored_then_resumed_on_one_device(tmp_path):
  logdir = tmp_path / 'pong'
  result = T.train(logdir, {'steps': 300, 'eval_every': 100,
                            'distribute.strategy': 'mirrored',
                            'distribute.cpu_devices': 2})
  assert result.returncode == 0, result.stdout + result.stderr
  assert 'Distribute mirrored: 2 replicas' in result.stdout
  assert 'batch 4 = 2 per replica' in result.stdout
  metrics = T.read_metrics(logdir)
  assert any('model_loss' in line for line in metrics)
  assert max(line['step'] for line in metrics) == 1200
  result = T.train(logdir, {'steps': 400, 'eval_every': 100})
  assert result.returncode == 0, result.stdout + result.stderr
  assert 'distribute.strategy: mirrored -> none' in result.stdout
  assert ('Pretrain' not in result.stdout
          and 'Finished 400 steps' in result.stdout)


def test_train_py_with_a_chief_and_a_worker(tmp_path):
  logdir = tmp_path / 'pong'
  cluster = {'worker': [f'127.0.0.1:{port}' for port in free_ports(2)]}
  flags = {'steps': 300, 'eval_every': 100,
           'distribute.strategy': 'multi_worker'}
  processes = [subprocess.Popen(
      T.command(logdir, flags), cwd=ROOT, stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT, text=True,
      env={**os.environ, **tf_config(cluster, i)})
      for i in range(2)]
  outputs = []
  try:
    for process in processes:
      outputs.append(process.communicate(timeout=400)[0])
  finally:
    for process in processes:
      if process.poll() is None:
        process.kill()
  chief, worker = outputs
  assert [p.returncode for p in processes] == [0, 0], (
      chief[-2000:] + worker[-2000:])
  assert 'Finished 300 steps' in chief
  updates = int(worker.split('the chief made its last update; ')[1].split()[0])
  # Each of the chief's updates was one of the worker's: pretrain + 1, one
  # per 16 steps after the prefill, and the last one that released the worker.
  from common import utils
  saved = utils.read_checkpoint(logdir / 'variables.pkl')
  assert updates == int(saved['wm/model_opt/updates']) == 16
  assert 'Prefill' not in worker and 'Finished' not in worker


def start_cluster(logdir, cluster, flags):
  """A chief (worker 0) and worker 1 of train.py on loopback ports, with
  `flags` over the tiny config; their stdout and stderr go to files beside
  the logdir (process.out, .err), unbuffered."""
  flags = {'eval_every': 100, 'log_every': 50,
           'distribute.strategy': 'multi_worker',
           'distribute.peer_timeout': 8, **flags}
  processes = []
  for i in range(2):
    out = open(logdir.parent / f'process{i}.out', 'w')
    err = open(logdir.parent / f'process{i}.err', 'w')
    process = subprocess.Popen(
        T.command(logdir, flags), cwd=ROOT, stdout=out, stderr=err,
        env={**os.environ, **tf_config(cluster, i), 'PYTHONUNBUFFERED': '1'})
    process.out, process.err = out.name, err.name
    processes.append(process)
  return processes


def wait_until_training(logdir, processes, timeout=600):
  deadline = time.time() + timeout
  while not any('model_loss' in row for row in T.read_metrics(logdir)):
    assert all(p.poll() is None for p in processes), 'a process exited'
    assert time.time() < deadline, 'timed out'
    time.sleep(0.5)


def kill_and_wait(processes, victim, bound=90):
  """SIGKILLs processes[victim]; the survivor's (exit status, seconds to
  exit, stderr); it must exit within `bound` seconds."""
  processes[victim].kill()
  processes[victim].wait()
  killed = time.time()
  survivor = processes[1 - victim]
  try:
    survivor.wait(timeout=bound)
  finally:
    if survivor.poll() is None:
      survivor.kill()
  seconds = time.time() - killed
  return survivor.returncode, seconds, pathlib.Path(survivor.err).read_text()


def one_error_line(err):
  errors = [line for line in err.splitlines() if line.startswith('error:')]
  assert len(errors) == 1 and 'Traceback' not in err, err[-3000:]
  return errors[0]


@pytest.mark.timeout(600)
def test_a_dead_worker_ends_the_chief_saved_and_the_commands_resume(tmp_path):
  from common import utils
  logdir = tmp_path / 'pong'
  cluster = {'worker': [f'127.0.0.1:{port}' for port in free_ports(2)]}
  # The first logged update is just after the prefill of 100 steps (of
  # 200); the worker dies then. No evaluation, no tf.function: faster.
  flags = {'steps': 200, 'jit': False, 'eval_eps': 0, 'log_every': 1000}
  processes = start_cluster(logdir, cluster, flags)
  try:
    wait_until_training(logdir, processes)
    status, seconds, err = kill_and_wait(processes, victim=1)
  finally:
    for process in processes:
      if process.poll() is None:
        process.kill()
  # peer_timeout 8: TensorFlow's health check notices within about 8 s.
  assert status == 1 and seconds < 60, (status, seconds, err[-3000:])
  assert f'worker 1 at {cluster["worker"][1]} of the cluster is gone' in (
      one_error_line(err))
  assert not (logdir / 'lock').exists()
  # Saved at the step it stopped at: the checkpoint, and every step taken in
  # the episodes (the one in progress too).
  out = pathlib.Path(processes[0].out).read_text()
  stopped = int(out.split('Stopped at step ')[1].split(':')[0])
  assert 100 < stopped < 200, out[-2000:]
  assert T.stored_steps(logdir) == stopped
  saved = utils.read_checkpoint(logdir / 'variables.pkl')
  assert int(saved['tfstep']) == stopped
  # The same two commands again resume at that step and finish.
  processes = start_cluster(logdir, cluster, flags)
  try:
    for process in processes:
      process.wait(timeout=400)
  finally:
    for process in processes:
      if process.poll() is None:
        process.kill()
  chief = pathlib.Path(processes[0].out).read_text()
  assert [p.returncode for p in processes] == [0, 0], chief[-2000:]
  assert f'{stopped} steps stored.' in chief and 'Pretrain' not in chief
  assert 'Finished 200 steps' in chief
  assert 'the chief made its last update' in (
      pathlib.Path(processes[1].out).read_text())


@pytest.mark.timeout(600)
def test_a_dead_chief_ends_the_worker_with_one_line(tmp_path):
  logdir = tmp_path / 'pong'
  cluster = {'worker': [f'127.0.0.1:{port}' for port in free_ports(2)]}
  processes = start_cluster(
      logdir, cluster, {'steps': 3000, 'jit': False, 'eval_eps': 0})
  try:
    wait_until_training(logdir, processes)
    status, seconds, err = kill_and_wait(processes, victim=0)
  finally:
    for process in processes:
      if process.poll() is None:
        process.kill()
  assert status == 1 and seconds < 60, (status, seconds, err[-3000:])
  assert (f'the chief (worker 0 at {cluster["worker"][0]}) of the cluster is '
          'gone') in one_error_line(err)


@pytest.mark.timeout(600)
def test_a_chief_dead_in_its_prefill_ends_the_waiting_worker(tmp_path):
  # Pendulum episodes of 100000 steps: no episode file for the worker to
  # wait for while the chief fills its replay. The worker runs no collective
  # then; it watches the chief's lock (on this host: the chief's pid).
  logdir = tmp_path / 'pendulum'
  cluster = {'worker': [f'127.0.0.1:{port}' for port in free_ports(2)]}
  processes = start_cluster(logdir, cluster, {
      'configs': 'defaults debug', 'task': 'gym_Pendulum-v1',
      'gym_kwargs': '{"max_episode_steps":100000}', 'time_limit': 0,
      'encoder.mlp_layers': '16', 'decoder.mlp_layers': '16',
      'prefill': 100000, 'steps': 200000})
  try:
    T.wait_for(lambda: 'Prefill the replay' in pathlib.Path(
        processes[0].out).read_text(), processes[0])
    T.wait_for(lambda: 'Worker: waiting for episodes' in pathlib.Path(
        processes[1].out).read_text(), processes[1])
    time.sleep(1)
    assert not list(logdir.glob('train_episodes/*.npz'))
    status, seconds, err = kill_and_wait(processes, victim=0, bound=30)
  finally:
    for process in processes:
      if process.poll() is None:
        process.kill()
  assert status == 1 and seconds < 30, (status, seconds, err[-3000:])
  line = one_error_line(err)
  assert line.startswith(
      f'error: the chief (worker 0 at {cluster["worker"][0]}) of the cluster '
      f'is gone (its process (pid {processes[0].pid}) no longer runs)'), line


def test_a_lost_peer_frees_the_pool_of_the_failed_collective():
  # TensorFlow's eager all-reduce maps over a ThreadPool; when a peer dies
  # the map raises and the pool, unclosed, stays in a reference cycle with
  # the error until the interpreter's last collection, whose Pool.__del__
  # then prints a traceback after the worker's one line. _peer_lost frees it
  # while the interpreter runs (garbage collection off: only references
  # count, as at a worker's exit).
  import gc
  import multiprocessing.pool
  import weakref
  from dreamerv2 import distribute
  pools = []

  def all_reduce():
    pool = multiprocessing.pool.ThreadPool(1)
    pools.append(weakref.ref(pool))

    def lost(_):
      raise ConnectionError('Socket closed: /job:worker/replica:0/task:0')
    return pool.map(lost, [0])

  def collective(clear):
    try:
      all_reduce()
    except ConnectionError as error:
      return distribute._peer_lost(error) if clear else error

  gc.collect()
  gc.disable()
  try:
    kept = collective(clear=False)
    assert pools[0]() is not None  # Without the clear, the cycle holds it.
    lost = collective(clear=True)
    assert pools[1]() is None
  finally:
    gc.enable()
    del kept
    gc.collect()
  assert isinstance(lost, distribute.PeerLost), lost


@pytest.mark.parametrize('flags, message', [
    ({'distribute.strategy': 'mirrored', 'distribute.cpu_devices': 3},
     'dataset.batch 4 does not divide among the 3 replicas of '
     'distribute.strategy mirrored'),
    ({'distribute.strategy': 'multi_worker'},
     'needs the TF_CONFIG environment variable'),
    ({'distribute.strategy': 'ring'}, 'none, mirrored, multi_worker'),
])
def test_a_distribute_setting_that_cannot_work_exits_2_before_tensorflow(
    tmp_path, flags, message):
  env = {k: v for k, v in os.environ.items() if k != 'TF_CONFIG'}
  argv = T.command(tmp_path / 'run', flags)
  result = subprocess.run(
      [sys.executable, '-c', T.TRACKED] + argv[2:], cwd=ROOT,
      capture_output=True, text=True, timeout=60, env=env)
  assert result.returncode == 2, result.stdout + result.stderr
  lines = result.stderr.strip().splitlines()
  assert lines[-1] == 'TF_LOADED=False' and len(lines) == 2, result.stderr
  assert message in lines[0]
