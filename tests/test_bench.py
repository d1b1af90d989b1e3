"""The benchmark scripts' quick modes run and print every figure, finite.

One quick run per script, checking presence and finiteness only: a benchmark
reports numbers, it never passes or fails on them (no speed thresholds here),
and what a figure claims is tested where the code is (e.g. the bfloat16 bias
gradient in test_precision.py). Scripts with resumable state of their own
(pong_world_model.py --checkpoint, learn_dmc.py) also get their resume tested.
The one learning check, and the tests of a benchmark's own internals
(interrupts, resumes and refusals), are marked `slow` (`make test-slow`).
"""

import json
import math
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


def run_bench(args, tmp_path, timeout=300):
  """Runs `python bench/...` from the repo root; returns its JSON lines."""
  # Temporary files of the scripts (replays, logdirs) land in tmp_path.
  result = subprocess.run(
      [sys.executable] + args, cwd=ROOT, capture_output=True, text=True,
      timeout=timeout, env={**os.environ, 'TMPDIR': str(tmp_path)})
  assert result.returncode == 0, result.stderr[-3000:]
  lines = [line for line in result.stdout.splitlines() if line.startswith('{')]
  assert lines, f'no JSON line in the output:\n{result.stdout[-3000:]}'
  return [json.loads(line) for line in lines]


def is_finite(value):
  return (isinstance(value, (int, float)) and not isinstance(value, bool)
          and math.isfinite(value))


def test_speed_quick_reports_every_figure(tmp_path):
  lines = run_bench(['bench/speed.py', '--quick'], tmp_path)
  assert len(lines) == 1, lines
  result = lines[0]
  for precision in ('precision16', 'precision32'):
    figures = result[precision]
    for key in ('update_s', 'update_s_min', 'update_s_max', 'compile_s',
                'policy_ms', 'peak_rss_mb'):
      assert is_finite(figures.get(key)) and figures[key] > 0, (
          precision, key, figures)
  assert result['train_agent_steps_per_s'] is not None, result.get('loop_error')
  for key in ('env_steps_per_s', 'replay_batches_per_s',
              'train_agent_steps_per_s', 'replay_rss_mb_per_1m_frames'):
    assert is_finite(result.get(key)) and result[key] > 0, (key, result)
  machine = result['machine']
  assert isinstance(machine['cores'], int) and machine['cores'] > 0
  assert isinstance(machine['tensorflow'], str) and machine['tensorflow']


@pytest.mark.slow  # A benchmark's internals, not a claim of the project.
def test_speed_deterministic_reports_the_ratio_of_its_round(tmp_path):
  lines = run_bench(['bench/speed.py', '--deterministic', '1', '--quick'],
                    tmp_path)
  result = lines[0]['deterministic']
  (round_,) = result['rounds']
  for key in ('default_update_s', 'deterministic_update_s'):
    assert is_finite(round_[key]) and round_[key] > 0, round_
  assert result['deterministic_over_default'] == round_[
      'deterministic_over_default']


def test_replay_memory_quick_reports_memory_per_frame(tmp_path):
  result = run_bench(
      ['bench/replay_memory.py', '--quick'], tmp_path, timeout=120)[-1]
  assert is_finite(result['rss_mb_per_1m_frames']), result
  assert result['stored_steps'] > 0


def test_learn_minigrid_quick_reports_a_learning_curve(tmp_path):
  result = run_bench(['bench/learn_minigrid.py', '--quick'], tmp_path)[-1]
  assert is_finite(result['random_floor']), result
  run = result['runs'][0]
  assert run['xs'] and len(run['xs']) == len(run['ys']), run
  assert all(is_finite(x) for x in run['xs'] + run['ys']), run
  assert is_finite(run['final_eval_return']), run


def test_learn_gym_quick_reports_a_learning_curve_in_frames(tmp_path):
  result = run_bench(['bench/learn_gym.py', '--quick', '--logdir',
                      str(tmp_path / 'runs')], tmp_path)[-1]
  assert result['complete'] and result['configs'] == 'defaults vector', result
  assert is_finite(result['random_floor']['mean']), result
  run = result['runs'][0]
  assert run['frames'] and len(run['frames']) == len(run['eval_return']), run
  assert all(is_finite(x) for x in run['frames'] + run['eval_return']), run
  assert run['frames'][-1] == result['frames'] == 600, run  # Action repeat 1.
  assert run['last_10_percent_evals'] >= 1, run
  assert is_finite(run['last_10_percent_mean']), run
  assert run['updates'] > 0 and run['exits'] == [0], run
  # One letter per evaluation episode, as many as metrics.jsonl logged.
  metrics = (tmp_path / 'runs' / 'gym_CartPole-v1' / 'dreamerv2_tf2' / '0'
             / 'metrics.jsonl').read_text()
  assert len(run['eval_endings']) == metrics.count('"eval_return"'), run
  assert set(run['eval_endings']) <= set('LCP'), run
  scores = json.loads(pathlib.Path(result['scores']).read_text())
  assert scores[0]['xs'] == run['frames'], scores


def test_learn_gym_names_how_each_cartpole_evaluation_ended(tmp_path):
  sys.path.insert(0, str(ROOT))
  from bench import learn_gym
  # CartPole's observation: cart position, velocity, pole angle, velocity.
  ends = {'1-cart': ([2.5, 0, 0.1, 0], True), '2-pole': ([1.0, 0, -0.22, 0],
          True), '3-limit': ([2.5, 0, 0.3, 0], False)}
  (tmp_path / 'eval_episodes').mkdir()
  for name, (last, terminal) in ends.items():
    np.savez(tmp_path / 'eval_episodes' / f'{name}-1.npz',
             vector=np.array([[0, 0, 0, 0], last], np.float32),
             is_terminal=np.array([False, terminal]))
  assert learn_gym.eval_endings(tmp_path, 'gym_CartPole-v1') == 'CPL'
  assert learn_gym.eval_endings(tmp_path, 'gym_Acrobot-v1') == 'TTL'


@pytest.mark.slow  # A benchmark's internals, not a claim of the project.
def test_learn_gym_ctrl_c_stops_the_seeds_and_reports_where_they_are(
    tmp_path):
  # SIGINT to the benchmark alone (its seeds run in sessions of their own, so
  # a terminal's Ctrl-C reaches only it too) stops the seed, which saves and
  # exits 0, and the benchmark prints its JSON line, incomplete.
  logdir = tmp_path / 'runs'
  process = subprocess.Popen(
      [sys.executable, 'bench/learn_gym.py', '--quick', '--logdir',
       str(logdir)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
      text=True, start_new_session=True,
      env={**os.environ, 'TMPDIR': str(tmp_path)})
  metrics = logdir / 'gym_CartPole-v1' / 'dreamerv2_tf2' / '0' / 'metrics.jsonl'
  try:
    deadline = time.time() + 240
    while not (metrics.exists() and 'eval_return' in metrics.read_text()):
      assert process.poll() is None and time.time() < deadline, (
          process.communicate()[1][-3000:])
      time.sleep(0.5)
    os.kill(process.pid, signal.SIGINT)
    out, err = process.communicate(timeout=120)
  finally:
    if process.poll() is None:
      os.killpg(process.pid, signal.SIGKILL)
  assert process.returncode == 0, err[-3000:]
  (result,) = [json.loads(l) for l in out.splitlines() if l.startswith('{')]
  assert not result['complete'], result
  (run,) = result['runs']
  assert run['exits'] == [0] and run['frames'], run
  assert 0 < run['agent_steps'] < result['steps'], run
  assert run['sittings'] == 1, run


def test_latent_square_quick_reports_the_curve(tmp_path):
  result = run_bench(
      ['bench/latent_square.py', '--quick'], tmp_path, timeout=120)[-1]
  assert [row['updates'] for row in result['curve']] == [2, 4], result
  assert all(row['grad_norm_max'] > 0 for row in result['curve']), result
  assert all(is_finite(y) for row in result['curve']
             for y in row.values()), result
  assert is_finite(result['floor']) and result['floor'] > 0, result
  assert is_finite(result['final_ratio']), result


@pytest.mark.slow  # A benchmark's internals, not a claim of the project.
def test_learn_minigrid_refuses_a_logdir_that_holds_runs(tmp_path):
  # train.py would resume such a run and the curve would start at its last step.
  (tmp_path / 'runs' / '1').mkdir(parents=True)
  (tmp_path / 'runs' / '1' / 'metrics.jsonl').write_text('{}\n')
  result = subprocess.run(
      [sys.executable, 'bench/learn_minigrid.py', '--seeds', '0', '1',
       '--logdir', str(tmp_path / 'runs')],
      cwd=ROOT, capture_output=True, text=True, timeout=60)
  assert result.returncode == 2, result.stderr[-2000:]
  assert str(tmp_path / 'runs' / '1') in result.stderr, result.stderr
  assert 'resume' in result.stderr, result.stderr


@pytest.fixture(scope='module')
def pong_checkpoint(tmp_path_factory):
  """One --quick run of 4 updates with --checkpoint: (its JSON, the
  checkpoint, its outdir). Tests that change the checkpoint work on a copy."""
  tmp_path = tmp_path_factory.mktemp('pong_checkpoint')
  ckpt, outdir = tmp_path / 'ckpt', tmp_path / 'out'
  first = run_bench(['bench/pong_world_model.py', '--quick', '--updates', '4',
                     '--checkpoint', str(ckpt), '--outdir', str(outdir)],
                    tmp_path)[-1]
  return first, ckpt, outdir


def test_pong_world_model_quick_reports_losses_and_saves_the_strips(
    pong_checkpoint):
  result, _, outdir = pong_checkpoint
  for key in ('loss_start', 'loss_end', 'openl_mse'):
    assert result[key] and all(
        is_finite(v) for v in result[key].values()), (key, result)
  # 4 updates, measured every 2 (--quick) and at the end.
  assert [row['updates'] for row in result['openl_mse_curve']] == [2, 4], result
  assert all(is_finite(y) for row in result['openl_mse_curve']
             for y in row.values()), result
  for key in ('image_loss', 'kl_loss', 'post_ent', 'prior_ent',
              'eps_bound_encoder', 'eps_bound_decoder', 'grad_norm_max'):
    assert all(key in row for row in result['openl_mse_curve']), (key, result)
  assert (outdir / 'pong-world-model-openl-quick.png').exists()
  assert pathlib.Path(result['png']).exists()
  assert result['interrupted'] is False and result['updates'] == 4, result


@pytest.mark.slow  # A benchmark's internals, not a claim of the project.
def test_pong_world_model_ctrl_c_reports_the_updates_done(tmp_path):
  # SIGINT after the first curve row (update 2 of 100000): the script stops
  # training and still prints the full JSON line and the strips.
  process = subprocess.Popen(
      [sys.executable, 'bench/pong_world_model.py', '--quick',
       '--updates', '100000', '--outdir', str(tmp_path / 'out')],
      cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
      env={**os.environ, 'TMPDIR': str(tmp_path)},
      # As a shell starts a background job: SIGINT ignored until the script
      # installs its handler.
      preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
  try:
    for line in process.stderr:
      if line.startswith('{"updates"'):
        process.send_signal(signal.SIGINT)
        break
    stdout, stderr = process.communicate(timeout=300)
  finally:
    process.kill()
  assert process.returncode == 0, stderr[-3000:]
  result = json.loads([l for l in stdout.splitlines() if l.startswith('{')][-1])
  assert result['interrupted'] is True, result
  assert 2 <= result['updates'] < 100000, result
  assert result['openl_mse_curve'][-1]['updates'] == result['updates'], result
  assert all(is_finite(v) for v in result['openl_mse'].values()), result
  assert (tmp_path / 'out' / 'pong-world-model-openl-quick.png').exists()
  # Without --checkpoint the replay's episode files went with the script.
  assert not list(tmp_path.glob('pong_wm_*')), list(tmp_path.iterdir())


@pytest.mark.slow  # A benchmark's internals, not a claim of the project.
def test_pong_world_model_checkpoint_resumes_where_the_run_stopped(
    tmp_path, pong_checkpoint):
  first, saved, _ = pong_checkpoint
  assert sorted(p.name for p in saved.iterdir()) == [
      'heldout', 'progress.json', 'run.json', 'train', 'world_model.pkl']
  ckpt, out = tmp_path / 'ckpt', str(tmp_path / 'out')
  shutil.copytree(saved, ckpt)
  second = run_bench(['bench/pong_world_model.py', '--quick', '--updates', '6',
                      '--checkpoint', str(ckpt), '--outdir', out], tmp_path)[-1]
  # The optimizer's update count came back: training went on from 4, not 0.
  assert second['updates'] == 6, second
  assert [(s['start'], s['end']) for s in second['segments']] == [
      (0, 4), (4, 6)], second
  assert [row['updates'] for row in second['openl_mse_curve']] == [
      2, 4, 6], second
  # The first segment's losses and rows are the first run's, kept unchanged.
  assert second['loss_start'] == first['loss_start'], (first, second)
  assert second['openl_mse_curve'][:2] == first['openl_mse_curve'], (
      first, second)
  assert second['train_episodes'] == first['train_episodes'], (first, second)
  assert second['train_steps'] == first['train_steps'], (first, second)
  # The weights came back: a third run has nothing to train and measures
  # the restored model as the second run left it (the posterior context
  # frames are deterministic; only the sampled rollouts differ).
  third = run_bench(['bench/pong_world_model.py', '--quick', '--updates', '6',
                     '--checkpoint', str(ckpt), '--outdir', out], tmp_path)[-1]
  assert third['updates'] == 6 and len(third['segments']) == 2, third
  assert third['openl_mse']['recon'] == pytest.approx(
      second['openl_mse']['recon'], rel=1e-3)


@pytest.mark.slow  # A benchmark's internals, not a claim of the project.
def test_pong_world_model_checkpoint_refuses_other_settings(
    tmp_path, pong_checkpoint):
  ckpt = tmp_path / 'ckpt'
  shutil.copytree(pong_checkpoint[1], ckpt)
  before = (ckpt / 'progress.json').read_text()
  result = subprocess.run(
      [sys.executable, 'bench/pong_world_model.py', '--quick', '--seed', '1',
       '--checkpoint', str(ckpt), '--config', '--model_opt.lr', '1e-3'],
      cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert result.returncode == 1, result.stderr[-2000:]
  assert '--seed 0 there, 1 here' in result.stderr, result.stderr[-2000:]
  assert "'--model_opt.lr', '1e-3'" in result.stderr, result.stderr[-2000:]
  # Refused before any work: TensorFlow was not even imported.
  assert 'tensorflow' not in result.stderr.lower(), result.stderr[-2000:]
  assert (ckpt / 'progress.json').read_text() == before


TINY_AGENT = ['--rssm.deter', '32', '--rssm.hidden', '32', '--rssm.stoch', '4',
              '--rssm.discrete', '4', '--encoder.cnn_depth', '4',
              '--decoder.cnn_depth', '4', '--reward_head.units', '16',
              '--discount_head.units', '16', '--actor.units', '16',
              '--critic.units', '16', '--dataset.length', '10',
              '--imag_horizon', '3']


def test_profile_update_reports_the_top_ops_and_removes_its_trace(tmp_path):
  result = run_bench(['bench/profile_update.py', '--calls', '1', '--batch', '2',
                      '--top', '3', '--config'] + TINY_AGENT, tmp_path)[-1]
  assert is_finite(result['update_s']) and result['update_s'] > 0, result
  assert (is_finite(result['op_ms_per_update'])
          and result['op_ms_per_update'] > 0), result
  for key in ('top_types', 'top_ops'):
    assert len(result[key]) == 3, result
    assert all(row['op'] and is_finite(row['ms_per_update'])
               and 0 < row['share'] <= 1
               for row in result[key]), result
  assert not list(tmp_path.glob('dreamer_profile_*')), list(tmp_path.iterdir())


def test_env_speed_reports_steps_per_second(tmp_path):
  result = run_bench(['bench/env_speed.py', '--steps', '200', '--rounds', '2'],
                     tmp_path)[-1]
  assert result['task'] == 'atari_pong' and result['steps'] == 200, result
  for key in ('env_steps_per_second', 'env_frames_per_second',
              'driver_steps_per_second'):
    assert is_finite(result[key]) and result[key] > 0, (key, result)
  assert result['env_frames_per_second'] == pytest.approx(
      result['env_steps_per_second'] * result['action_repeat'],
      rel=0.01), result
  for key in ('ours_steps_per_second',
              'gymnasium_preprocessing_steps_per_second',
              'ours_over_gymnasium'):
    assert is_finite(result[key]) and result[key] > 0, (key, result)


@pytest.mark.slow  # A benchmark's internals, not a claim of the project.
def test_env_speed_figures_are_the_medians_of_their_rounds(tmp_path):
  result = run_bench(['bench/env_speed.py', '--steps', '200', '--rounds', '2'],
                     tmp_path)[-1]
  assert_medians_of_rounds(result, 2, 'env_steps_per_second',
                           'ours_steps_per_second',
                           'gymnasium_preprocessing_steps_per_second',
                           'ours_over_gymnasium')
  assert result['ours_over_gymnasium_rounds'] == pytest.approx(
      [a / b for a, b in zip(
          result['ours_steps_per_second_rounds'],
          result['gymnasium_preprocessing_steps_per_second_rounds'])],
      rel=0.01), result


@pytest.mark.slow  # A benchmark's internals, not a claim of the project.
def test_env_speed_compares_two_env_processes_with_one(tmp_path):
  result = run_bench(['bench/env_speed.py', '--steps', '100', '--envs', '2',
                      '--parallel', 'process', '--rounds', '3'],
                     tmp_path)[-1]
  assert result['envs'] == 2 and result['parallel'] == 'process', result
  rates = ('env_steps_per_second', 'one_env_steps_per_second',
           'one_env_in_process_steps_per_second',
           'independent_steps_per_second',
           'one_independent_steps_per_second')
  assert_medians_of_rounds(result, 3, *rates, 'speedup_over_one_env',
                           'speedup_over_one_env_in_process',
                           'independent_speedup', 'envs_over_independent')
  # Each round's ratio is of the rates measured in that round.
  for ratio, (rate, over) in {
      'speedup_over_one_env': ('env', 'one_env'),
      'speedup_over_one_env_in_process': ('env', 'one_env_in_process'),
      'independent_speedup': ('independent', 'one_independent'),
      'envs_over_independent': ('env', 'independent')}.items():
    assert result[f'{ratio}_rounds'] == pytest.approx(
        [a / b for a, b in zip(result[f'{rate}_steps_per_second_rounds'],
                               result[f'{over}_steps_per_second_rounds'])],
        rel=0.01), (ratio, result)


@pytest.mark.slow  # A benchmark's internals, not a claim of the project.
def test_env_speed_with_fewer_steps_than_envs(tmp_path):
  # Every loop rounds up to whole rounds: no loop of zero steps, no rate 0.
  result = run_bench(['bench/env_speed.py', '--steps', '2', '--envs', '3',
                      '--parallel', 'process', '--rounds', '1'],
                     tmp_path)[-1]
  for key in ('env_steps_per_second', 'independent_steps_per_second',
              'independent_speedup', 'envs_over_independent'):
    assert is_finite(result[key]) and result[key] > 0, (key, result)


def assert_medians_of_rounds(result, rounds, *keys):
  """Each figure is the median of its `_rounds` list, one entry a round."""
  assert result['rounds'] == rounds, result
  for key in keys:
    each = result[f'{key}_rounds']
    assert len(each) == rounds and all(
        is_finite(x) and x > 0 for x in each), (key, result)
    assert result[key] == pytest.approx(float(np.median(each)),
                                        rel=1e-3), (key, result)


@pytest.mark.parametrize('flag', ['--rounds', '--steps', '--envs'])
def test_env_speed_refuses_a_count_below_one(tmp_path, flag):
  result = subprocess.run(
      [sys.executable, 'bench/env_speed.py', flag, '0'], cwd=ROOT,
      capture_output=True, text=True, timeout=120)
  assert result.returncode == 2, result.stderr[-2000:]
  assert f'{flag} must be at least 1; got 0' in result.stderr, result.stderr
  assert not result.stdout, result.stdout


def test_plot_speed_plots_the_generated_runs(tmp_path):
  result = run_bench(['bench/plot_speed.py', '--tasks', '2', '--methods', '2',
                      '--seeds', '2', '--lines', '20'], tmp_path)[-1]
  assert result['runs'] == 8, result
  assert (is_finite(result['plot_seconds'])
          and result['plot_seconds'] > 0), result
  assert all(size > 0 for size in result['output_bytes'].values()), result
  assert set(result['output_bytes']) >= {'curves.json', 'curves.png'}, result


def test_bias_grad_prints_its_three_sums(tmp_path):
  # That add_bias matches the float32 sum is test_precision's claim; here the
  # script runs and prints its figures.
  result = run_bench(['bench/bias_grad.py'], tmp_path)[-1]
  for key in ('kernels_add_bias_bfloat16', 'float32_sum',
              'bias_add_grad_bfloat16'):
    assert is_finite(result[key]), (key, result)


@pytest.mark.slow
@pytest.mark.timeout(3600)  # pytest.ini's 900 s is for the fast suite.
def test_dreamer_learns_minigrid_empty_from_pixels(tmp_path):
  # The learning claim of bench/README.md, as a long check (~15 minutes on 2
  # cores): seeds 0, 1, 2 reached an eval return of 0.955 at 6000, 7000 and
  # 5000 env steps there.
  lines = run_bench(
      ['bench/learn_minigrid.py', '--seeds', '0', '--steps', '8000',
       '--out', str(tmp_path / 'minigrid.json')], tmp_path, timeout=3600)
  result = lines[-1]
  run = result['runs'][0]
  assert run['first_step_at_target'] is not None, run
  assert max(run['ys']) >= 0.9 > result['random_floor']


def test_learn_dmc_quick_resumes_and_reports_every_figure(tmp_path):
  # Two sittings of a tiny model: the second resumes what the first saved.
  # Before them, a sitting whose benchmark was killed (no end written): its
  # end is estimated from the logdir's newest file before new files come.
  logdir = tmp_path / 'runs'
  seed_dir = logdir / 'dmc_walker_walk' / 'dreamerv2_tf2' / '0'
  seed_dir.mkdir(parents=True)
  (seed_dir / 'sittings.jsonl').write_text(
      json.dumps({'start': 1000.0, 'start_step': 0, 'start_updates': 0}) + '\n')
  os.utime(seed_dir / 'sittings.jsonl', (1500.0, 1500.0))
  (result,) = run_bench(
      ['bench/learn_dmc.py', '--quick', '--logdir', str(logdir)], tmp_path,
      timeout=240)
  assert result['complete'] and result['quick']
  (run,) = result['runs']
  assert run['sittings'] == 3
  killed, *sittings = [json.loads(line) for line in (
      seed_dir / 'sittings.jsonl').read_text().splitlines()]
  assert killed['end'] == 1500.0 and killed['estimated_end']
  assert [s['exit'] for s in sittings] == [0, 0]
  # The second sitting starts where the first ended and reaches the end.
  assert sittings[1]['start_step'] == sittings[0]['end_step'] > 0
  assert sittings[1]['start_updates'] == sittings[0]['end_updates'] > 0
  assert sittings[1]['end_step'] >= result['frames'] // 2
  assert run['updates'] > sittings[0]['end_updates']
  # Evaluations every 200 agent steps = 400 frames, from both sittings.
  assert run['frames'][-1] >= 800 and len(run['frames']) >= 2
  assert all(is_finite(y) for y in run['eval_return'])
  assert is_finite(run['wall_s']) and run['wall_s'] > 0
  for key in ('agent_steps_per_s', 'updates_per_s'):
    assert is_finite(run[key]) and run[key] > 0
  assert is_finite(result['random_floor'])
  # 800 frames come before the published curves' first point (30k): the
  # report says so instead of comparing.
  assert 'first point is at 30000' in result['target']['error']
  (reason,) = result['compare']['short']
  assert 'before the first published point at 30000' in reason
  assert result['published'] == {}
  scores = json.loads(pathlib.Path(result['scores']).read_text())
  assert (scores[0]['method'] == 'dreamerv2_tf2'
          and scores[0]['xs'] == run['frames'])
  assert pathlib.Path(result['png']).stat().st_size > 0




@pytest.mark.slow  # A benchmark's internals, not a claim of the project.
@pytest.mark.timeout(120)
def test_learn_dmc_ctrl_c_ends_the_run_with_seeds_still_waiting(tmp_path):
  # --jobs 1 and two seeds: Ctrl-C while seed 0 trains stops it, and the
  # benchmark returns instead of waiting for seed 1, which it never starts.
  # A child that sleeps stands in for train.py.
  code = f"""
import signal, sys, threading, os
sys.path.insert(0, 'bench')
import learn_dmc
learn_dmc.train_command = lambda args, seed, steps: [
    sys.executable, '-c', 'import time; time.sleep(60)']
args = learn_dmc.argparse.Namespace(
    logdir={str(tmp_path)!r}, task='dmc_walker_walk', jobs=1,
    eval_every=5000, quick=False)
threading.Timer(3, os.kill, (os.getpid(), signal.SIGINT)).start()
print('complete', learn_dmc.run_seeds(args, [0, 1], 50000))
"""
  result = subprocess.run([sys.executable, '-c', code], cwd=ROOT,
                          capture_output=True, text=True, timeout=90)
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'complete False' in result.stdout
  seeds = tmp_path / 'dmc_walker_walk' / 'dreamerv2_tf2'
  (sitting,) = [json.loads(line) for line in
                (seeds / '0' / 'sittings.jsonl').read_text().splitlines()]
  assert sitting['exit'] != 0 and sitting['end'] > sitting['start']
  assert not (seeds / '1' / 'sittings.jsonl').exists()


@pytest.mark.slow  # A benchmark's internals, not a claim of the project.
@pytest.mark.timeout(120)
def test_seeds_a_failed_seed_ends_the_run_and_stops_the_others(tmp_path):
  # Two seeds side by side: seed 0's child fails at once, seed 1's would
  # train for a minute. The benchmark ends with seed 0's log and does not
  # leave seed 1 training in its own session: it gets SIGINT (a train.py
  # saves on it) and its sitting's end is written.
  code = f"""
import pathlib, sys
sys.path.insert(0, '.')
from bench import seeds
logdirs = {{0: pathlib.Path({str(tmp_path)!r}) / '0',
            1: pathlib.Path({str(tmp_path)!r}) / '1'}}
fail = 'import sys; print("the end of seed 0"); sys.exit(3)'
train = 'import time; time.sleep(60)'
seeds.run(logdirs, lambda seed: [sys.executable, '-c', train if seed else fail],
          steps=100, action_repeat=1, jobs=2, name='bench')
"""
  start = time.time()
  result = subprocess.run([sys.executable, '-c', code], cwd=ROOT,
                          capture_output=True, text=True, timeout=90)
  assert time.time() - start < 50, 'waited for seed 1 to end by itself'
  assert result.returncode == 1, (result.returncode, result.stderr[-3000:])
  assert 'bench: seed 0 exited 3' in result.stderr, result.stderr[-3000:]
  assert 'the end of seed 0' in result.stderr
  for seed, status in ((0, 3), (1, -signal.SIGINT)):
    (sitting,) = [json.loads(line) for line in (
        tmp_path / str(seed) / 'sittings.jsonl').read_text().splitlines()]
    assert sitting['exit'] == status and sitting['end'] >= sitting['start']

