"""The run directory: one writer per logdir (common/rundir.py, `Lock`)."""

import json
import os
import pathlib
import subprocess
import sys
import time

import pytest

from common import rundir


def test_a_live_runs_lock_stops_a_second_writer_naming_it(tmp_path):
  with rundir.Lock(tmp_path):
    held = json.loads((tmp_path / 'lock').read_text())
    assert held['pid'] == os.getpid() and held['host']
    with pytest.raises(rundir.LogdirInUse) as error:
      with rundir.Lock(tmp_path):
        pass
    message = str(error.value)
    assert f'in use by the run with pid {os.getpid()} on {held["host"]}' in (
        message)
    assert '\n' not in message
  assert not (tmp_path / 'lock').exists()  # Released.


def test_the_lock_of_a_process_that_died_is_taken_over(tmp_path, capsys):
  dead = subprocess.Popen([sys.executable, '-c', 'pass'])
  dead.wait()
  (tmp_path / 'lock').write_text(json.dumps({
      'pid': dead.pid, 'host': rundir.Lock(tmp_path).holder['host'],
      'started': 1, 'since': time.time(), 'heartbeat': time.time()}))
  with rundir.Lock(tmp_path):
    assert json.loads((tmp_path / 'lock').read_text())['pid'] == os.getpid()
  assert (f'Taking over the logdir from the run with pid {dead.pid}'
          in capsys.readouterr().out)


def test_a_pid_reused_by_a_later_process_does_not_hold_the_lock(tmp_path):
  # Our own pid, but a start time other than ours: the holder is gone.
  lock = rundir.Lock(tmp_path)
  (tmp_path / 'lock').write_text(json.dumps({
      **lock.holder, 'started': (lock.holder['started'] or 0) + 1}))
  if lock.holder['started'] is None:
    pytest.skip('no /proc start times on this system')
  with lock:
    pass


@pytest.mark.parametrize('age, stale', [(10, False), (1000, True)])
def test_another_hosts_lock_is_stale_after_its_heartbeat_stops(
    tmp_path, age, stale):
  (tmp_path / 'lock').write_text(json.dumps({
      'pid': 1, 'host': 'another-host', 'started': 1, 'since': 0,
      'heartbeat': time.time() - age}))
  if stale:
    with rundir.Lock(tmp_path, stale_after=300):
      pass
  else:
    with pytest.raises(rundir.LogdirInUse, match='pid 1 on another-host'):
      with rundir.Lock(tmp_path, stale_after=300):
        pass


def test_the_heartbeat_renews_the_lock_while_the_run_lives(tmp_path):
  with rundir.Lock(tmp_path, heartbeat=0.05):
    first = json.loads((tmp_path / 'lock').read_text())['heartbeat']
    time.sleep(0.3)
    later = json.loads((tmp_path / 'lock').read_text())['heartbeat']
  assert later > first


def write_lock(logdir, **holder):
  (logdir / 'lock').write_text(json.dumps({
      'pid': 1, 'host': 'another-host', 'started': 1, 'since': 0,
      'heartbeat': time.time(), **holder}))


def test_another_hosts_lock_says_when_it_turns_stale_and_how_to_clear_it(
    tmp_path):
  beat = time.time() - 100
  write_lock(tmp_path, heartbeat=beat)
  with pytest.raises(rundir.LogdirInUse) as error:
    with rundir.Lock(tmp_path, stale_after=300):
      pass
  message = str(error.value)
  stale = time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(beat + 300))
  assert f'counts as ended 300 s after its last heartbeat (at {stale}' in (
      message)
  assert f'if you know it has ended, delete {tmp_path / "lock"}' in message
  assert '\n' not in message


def test_a_zombie_holds_no_lock(tmp_path):
  # A SIGKILLed run whose parent has not collected it yet: its pid still
  # answers os.kill, but it has ended.
  child = subprocess.Popen([sys.executable, '-c', 'pass'])
  deadline = time.time() + 10
  while rundir._process_stat(child.pid)[0] != 'Z':
    assert time.time() < deadline
    time.sleep(0.05)
  lock = rundir.Lock(tmp_path)
  write_lock(tmp_path, pid=child.pid, host=lock.holder['host'],
             started=rundir._process_stat(child.pid)[1])
  with lock:
    pass
  child.wait()


def test_of_two_runs_taking_over_one_stale_lock_at_once_one_gets_it(
    tmp_path, monkeypatch):
  # Both judge the dead run's lock stale; the first takes it over between
  # the second's judgement and its takeover. The second must not remove the
  # first's fresh lock: it finds it live and stops.
  dead = subprocess.Popen([sys.executable, '-c', 'pass'])
  dead.wait()
  first, second = rundir.Lock(tmp_path), rundir.Lock(tmp_path)
  write_lock(tmp_path, pid=dead.pid, host=first.holder['host'])
  judge = rundir.Lock._stale

  def interleaved(lock, held):
    stale = judge(lock, held)
    if lock is second and first._thread is None:
      first.__enter__()
    return stale
  monkeypatch.setattr(rundir.Lock, '_stale', interleaved)
  try:
    with pytest.raises(rundir.LogdirInUse, match=f'pid {os.getpid()}'):
      second.__enter__()
    assert json.loads((tmp_path / 'lock').read_text()) == first._content()
  finally:
    first.__exit__(None, None, None)
  assert not any(tmp_path.iterdir())


HOLD = """
import sys, time
sys.path.insert(0, '.')
from common import rundir
with rundir.Lock(sys.argv[1], heartbeat=0.1):
  print('held', flush=True)
  time.sleep(float(sys.argv[2]))
print('released', flush=True)
"""


def hold(logdir, seconds):
  process = subprocess.Popen(
      [sys.executable, '-c', HOLD, str(logdir), str(seconds)],
      cwd=pathlib.Path(__file__).resolve().parent.parent,
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  assert process.stdout.readline() == 'held\n'
  return process


def test_a_run_whose_lock_another_run_took_ends_at_once_unsaved(tmp_path):
  run = hold(tmp_path, 30)
  try:
    write_lock(tmp_path, pid=4321)  # Another run took it over.
    out, err = run.communicate(timeout=10)
  finally:
    run.kill()
  assert run.returncode == 1 and 'released' not in out, (out, err)
  lines = err.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith(
      'error: the run with pid 4321 on another-host took over '), err
  assert json.loads((tmp_path / 'lock').read_text())['pid'] == 4321


def test_a_lock_removed_by_hand_is_taken_again_by_its_run(tmp_path):
  run = hold(tmp_path, 2)
  try:
    (tmp_path / 'lock').unlink()
    time.sleep(0.5)
    assert json.loads((tmp_path / 'lock').read_text())['pid'] == run.pid
    out, err = run.communicate(timeout=10)
  finally:
    run.kill()
  assert run.returncode == 0 and 'released' in out
  assert err.strip() == f'Warning: {tmp_path / "lock"} was removed while ' + (
      'this run held it; taken again.')
  assert not (tmp_path / 'lock').exists()


def test_a_waiting_process_sees_when_the_lock_holder_is_gone(tmp_path):
  host = rundir.Lock(tmp_path).holder['host']
  # Same host: the holder's pid.
  run = hold(tmp_path, 30)
  holder = rundir.Holder(tmp_path, silent_after=60)
  assert holder.gone() is None
  run.kill()
  run.wait()
  assert holder.gone() == f'its process (pid {run.pid}) no longer runs'
  # Another host: a heartbeat that stops changing, on this host's clock.
  write_lock(tmp_path, heartbeat=123.0)
  holder = rundir.Holder(tmp_path, silent_after=0.3)
  assert holder.gone() is None
  time.sleep(0.2)
  write_lock(tmp_path, heartbeat=124.0)
  assert holder.gone() is None
  time.sleep(0.4)
  assert 'has not changed for 0.3 s' in holder.gone()
  # Taken over by another run, or removed (missing for a second).
  holder = rundir.Holder(tmp_path, silent_after=60)
  assert holder.gone() is None
  write_lock(tmp_path, pid=2, host=host)
  assert holder.gone().startswith('another run (pid 2) took over')
  (tmp_path / 'lock').unlink()
  assert holder.gone() is None
  time.sleep(1)
  assert holder.gone() == f'{tmp_path / "lock"} was removed'


def test_api_train_on_a_live_runs_logdir_raises_before_writing(tmp_path):
  import gymnasium
  from dreamerv2 import api
  logdir = tmp_path / 'run'
  logdir.mkdir()
  with rundir.Lock(logdir):
    held = (logdir / 'lock').read_text()
    with pytest.raises(rundir.LogdirInUse, match=f'pid {os.getpid()}'):
      api.train(gymnasium.make('CartPole-v1'),
                {'logdir': str(logdir), 'steps': 10})
    assert [p.name for p in logdir.iterdir()] == ['lock']
    assert (logdir / 'lock').read_text() == held


def test_a_replay_larger_than_the_memory_is_warned_about_before_prefill():
  import gymnasium
  import numpy as np
  from common import envs
  from dreamerv2 import build
  obs = {'image': gymnasium.spaces.Box(0, 255, (64, 64, 3), np.uint8),
         'reward': gymnasium.spaces.Box(-np.inf, np.inf, (), np.float32)}
  act = {'action': envs.OneHotBox(18)}
  # 12288 + 4 + 18 * 4 bytes, times the replay's 1.03; the eval replay
  # holds capacity // 100 more.
  step = 1.03 * (64 * 64 * 3 + 4 + 72)
  warning = build.replay_memory_warning(obs, act, 2e6, available=1e9)
  assert warning.startswith('Warning: at replay.capacity 2000000 steps')
  assert f'{2.02e6 * step / 1e9:.1f} GB' in warning
  assert '1.0 GB of memory available' in warning
  assert f'about {int(1e9 // (step * 1.01))} steps fit' in warning
  assert '--replay.capacity' in warning and '\n' not in warning
  assert build.replay_memory_warning(obs, act, 1e4, available=1e9) is None
  assert build.available_memory() > 0


def test_available_memory_is_the_least_of_the_system_and_the_cgroup(tmp_path):
  from dreamerv2 import build
  (tmp_path / 'proc').mkdir()
  (tmp_path / 'proc' / 'meminfo').write_text(
      'MemTotal: 24000000 kB\nMemAvailable: 20000000 kB\n')
  assert build.available_memory(tmp_path) == 20000000 * 1024
  cgroup = tmp_path / 'sys' / 'fs' / 'cgroup'
  cgroup.mkdir(parents=True)
  (cgroup / 'memory.max').write_text('max\n')
  (cgroup / 'memory.current').write_text('1000\n')
  assert build.available_memory(tmp_path) == 20000000 * 1024  # No limit.
  (cgroup / 'memory.max').write_text('8000000000\n')
  assert build.available_memory(tmp_path) == 8000000000 - 1000  # A job's.
  (cgroup / 'memory.max').unlink()
  (cgroup / 'memory').mkdir()
  (cgroup / 'memory' / 'memory.limit_in_bytes').write_text('4000000000\n')
  (cgroup / 'memory' / 'memory.usage_in_bytes').write_text('3000000000\n')
  assert build.available_memory(tmp_path) == 1000000000  # cgroup v1.
  assert build.available_memory(tmp_path / 'none') is None
