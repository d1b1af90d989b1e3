"""The run directory: one writer per logdir (common/rundir.py, `Lock`)."""

import json
import os
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
