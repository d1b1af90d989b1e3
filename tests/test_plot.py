"""plot.py: binning, seeds, published scores, and messages for bad input."""

import collections
import json
import math
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from common import plot

ROOT = pathlib.Path(__file__).resolve().parent.parent
SCORES = ROOT / 'scores'


def write_run(logdir, lines):
  logdir.mkdir(parents=True, exist_ok=True)
  with (logdir / 'metrics.jsonl').open('w') as f:
    for line in lines:
      f.write((line if isinstance(line, str) else json.dumps(line)) + '\n')


def synthetic_tree(root, tasks=('atari_pong', 'atari_breakout'),
                   methods=('dreamerv2', 'mine'), seeds=(1, 2, 3)):
  """eval_return = seed + step / 100 at steps 5, 10, ..., 100."""
  for task in tasks:
    for method in methods:
      for seed in seeds:
        write_run(root / task / method / str(seed), [
            {'step': step, 'eval_return': seed + step / 100, 'fps': 10.0}
            for step in range(5, 101, 5)])
  return root


def run_script(*args):
  return subprocess.run(
      [sys.executable, 'common/plot.py', *map(str, args)], cwd=ROOT,
      capture_output=True, text=True, timeout=300)


def main(args):
  plot.main([str(arg) for arg in args])


def test_binning_averages_each_interval_at_its_upper_edge():
  xs = np.arange(0, 21)  # 0, 1, ..., 20
  edges, means = plot.bin_curve(xs, xs * 2.0, 10)
  # Bins (-10, 0], (0, 10], (10, 20]: a point on an edge belongs to the bin
  # that ends there.
  np.testing.assert_array_equal(edges, [0, 10, 20])
  np.testing.assert_allclose(means, [0, 11, 31])
  # Unordered input (e.g. after a resume) and empty bins left out.
  edges, means = plot.bin_curve([35, 1, 3, 36], [4, 1, 3, 6], 10)
  np.testing.assert_array_equal(edges, [10, 40])
  np.testing.assert_allclose(means, [2, 5])
  # No binning only sorts.
  edges, means = plot.bin_curve([3, 1, 2], [30, 10, 20], None)
  np.testing.assert_array_equal(edges, [1, 2, 3])
  np.testing.assert_array_equal(means, [10, 20, 30])


def test_published_xs_are_upper_bin_edges():
  # Binning the published curves again with their own width changes nothing.
  for filename, bins in (('atari-dreamerv2.json', 1e6),
                         ('dmc-vision-dreamerv2.json', 3e4)):
    curves = plot.load_scores(SCORES / filename)
    # The DMC file also holds summary curves over 1..100 instead of frames.
    curves = [c for c in curves if not c['task'].startswith('stats_')]
    for curve in curves[::10]:
      xs, ys = plot.bin_curve(curve['xs'], curve['ys'], bins)
      np.testing.assert_array_equal(xs, curve['xs'])
      np.testing.assert_allclose(ys, curve['ys'])


def test_seeds_are_aggregated_per_x():
  curves = [
      (np.array([10., 20., 30.]), np.array([1., 2., 3.])),
      (np.array([10., 20., 30.]), np.array([3., 4., 11.])),
      (np.array([10., 20.]), np.array([5., 9.])),  # Stopped early.
  ]
  xs, mean, low, high = plot.aggregate(curves, 'std1')
  np.testing.assert_array_equal(xs, [10, 20, 30])
  np.testing.assert_allclose(mean, [3, 5, 7])
  std = np.array([np.std([1, 3, 5]), np.std([2, 4, 9]), np.std([3, 11])])
  np.testing.assert_allclose(low, mean - std)
  np.testing.assert_allclose(high, mean + std)
  xs, median, low, high = plot.aggregate(curves, 'per0')
  np.testing.assert_allclose(median, [3, 4, 7])
  np.testing.assert_allclose(low, [1, 2, 3])
  np.testing.assert_allclose(high, [5, 9, 11])
  xs, median, low, high = plot.aggregate(curves, 'per25')
  np.testing.assert_allclose(low, [2, 3, 5])
  np.testing.assert_allclose(high, [4, 6.5, 9])


def test_task_method_and_seed_come_from_the_directory_levels(tmp_path):
  write_run(tmp_path / 'a' / 'atari_pong' / 'dreamerv2' / '3',
            [{'step': 4, 'eval_return': -20.0}])
  write_run(tmp_path / 'b' / 'c' / 'dmc_walker_walk' / 'mine' / 'seed_a',
            [{'step': 8, 'eval_return': 100.0},
             {'step': 12, 'train_return': 1.0}])
  runs = plot.load_runs([tmp_path], 'step', 'eval_return')
  names = sorted(
      (r['task'], r['method'], r['seed'], list(r['xs'])) for r in runs)
  assert names == [('atari_pong', 'dreamerv2', '3', [4.0]),
                   ('dmc_walker_walk', 'mine', 'seed_a', [8.0])]
  # A y regex matching several keys gives one curve per key.
  runs = plot.load_runs([tmp_path / 'b'], 'step', '.*_return')
  assert sorted(r['method'] for r in runs) == [
      'mine eval_return', 'mine train_return']


def test_binned_output_read_back_as_baselines_gives_the_same_curves(tmp_path):
  synthetic_tree(tmp_path / 'logdir')
  main(['--indir', tmp_path / 'logdir', '--bins', '10',
             '--outdir', tmp_path / 'first'])
  first = json.loads((tmp_path / 'first' / 'curves.json').read_text())
  assert len(first) == 2 * 2 * 3
  pong = [c for c in first if c['task'] == 'atari_pong'
          and c['method'] == 'mine' and c['seed'] == '2']
  assert pong[0]['xs'] == [10, 20, 30, 40, 50, 60, 70, 80, 90, 100]
  # Steps 5 and 10 fall into (0, 10]: 2 + mean(0.05, 0.10).
  assert pong[0]['ys'][0] == pytest.approx(2.075)
  for bins in ('10', 'none'):
    main(['--baselines', tmp_path / 'first' / 'curves.json',
               '--bins', bins, '--outdir', tmp_path / 'second'])
    second = json.loads((tmp_path / 'second' / 'curves.json').read_text())
    assert second == first
  assert (tmp_path / 'second' / 'curves.png').stat().st_size > 0
  assert (tmp_path / 'second' / 'curves.pdf').stat().st_size > 0


def test_published_dreamerv2_normalised_scores():
  curves = plot.load_scores(SCORES / 'atari-dreamerv2.json')
  reference = plot.load_reference(SCORES / 'baselines.json')
  tasks = {c['task'] for c in curves}
  # The 55 games of the paper. baselines.json holds 7 more Atari games, 6 of
  # them without a human score (load_reference drops those).
  assert len(tasks) == 55 and tasks <= set(reference)
  assert len(json.loads((SCORES / 'baselines.json').read_text())) == 62
  assert len(reference) == 56
  # 11 seeds per game, under two labels ('dreamerv2' 8, 'nosched' 3); the
  # paper's table pools them all, so pool them here too.
  seeds = collections.Counter((c['task'], c['method']) for c in curves)
  assert set(seeds.values()) == {8, 3}
  for curve in curves:
    curve['method'] = 'dreamerv2'
  (stats,), missing = plot.normalised_scores(curves, reference)
  assert missing == [] and stats['tasks'] == 55
  assert stats['gamer_median'] == pytest.approx(2.246, abs=0.01)
  assert stats['record_mean'] == pytest.approx(0.426, abs=0.01)
  assert stats['clipped_record_mean'] == pytest.approx(0.272, abs=0.01)


def test_stats_are_printed_and_written(tmp_path):
  result = run_script(
      '--baselines', SCORES / 'atari-dreamerv2.json', '--tasks', 'atari_p.*',
      '--stats', '--outdir', tmp_path, '--name', 'pong')
  assert result.returncode == 0, result.stderr
  lines = result.stdout.splitlines()
  assert lines[0].split() == ['method', 'tasks', *plot.STATS]
  stats = json.loads((tmp_path / 'pong_stats.json').read_text())
  assert [s['method'] for s in stats] == ['dreamerv2', 'nosched']
  # Phoenix, Pitfall, Pong, Private Eye.
  assert [s['tasks'] for s in stats] == [4, 4]


def test_published_curves_alone_without_tensorflow(tmp_path):
  # As a script, from the repository root, and TensorFlow never loaded.
  code = (
      'import runpy, sys; '
      f'sys.argv = ["common/plot.py", "--baselines", '
      f'"scores/atari-dreamerv2.json", '
      f'"--tasks", "atari_pong", "--outdir", "{tmp_path}"]; '
      'runpy.run_path("common/plot.py", run_name="__main__"); '
      'assert "tensorflow" not in sys.modules, "tensorflow was imported"')
  subprocess.run(
      [sys.executable, '-c', code], cwd=ROOT, check=True, timeout=300)
  curves = json.loads((tmp_path / 'curves.json').read_text())
  assert len(curves) == 11 and {c['task'] for c in curves} == {'atari_pong'}
  assert (tmp_path / 'curves.png').stat().st_size > 0


def test_baselines_are_limited_to_the_plotted_tasks(tmp_path):
  synthetic_tree(tmp_path / 'logdir', tasks=('atari_pong',), methods=('mine',))
  main(['--indir', tmp_path / 'logdir', '--outdir', tmp_path / 'out',
             '--baselines', SCORES / 'atari-dreamerv2.json'])
  curves = json.loads((tmp_path / 'out' / 'curves.json').read_text())
  assert {c['task'] for c in curves} == {'atari_pong'}
  assert collections.Counter(c['method'] for c in curves) == {
      'mine': 3, 'dreamerv2': 8, 'nosched': 3}


@pytest.mark.parametrize('case, message', [
    ('empty_indir', 'No metrics.jsonl under'),
    ('missing_key', "No run has values for --yaxis 'eval_score'"),
    ('no_match', 'No runs left after --tasks / --methods'),
    ('bad_baselines', 'is not a score file'),
    ('missing_baselines', 'Cannot read'),
    ('bad_bins', "'ten' is not a bin width"),
])
def test_bad_input_is_one_line_without_traceback(tmp_path, case, message):
  logdir = synthetic_tree(tmp_path / 'logdir', tasks=('atari_pong',),
                          methods=('mine',), seeds=(1,))
  (tmp_path / 'empty').mkdir()
  (tmp_path / 'bad.json').write_text('{"task": "atari_pong"}')
  args = {
      'empty_indir': ['--indir', tmp_path / 'empty'],
      'missing_key': ['--indir', logdir, '--yaxis', 'eval_score'],
      'no_match': ['--indir', logdir, '--tasks', 'atari_breakout'],
      'bad_baselines': ['--baselines', tmp_path / 'bad.json'],
      'missing_baselines': ['--baselines', tmp_path / 'nothing.json'],
      'bad_bins': ['--indir', logdir, '--bins', 'ten'],
  }[case]
  result = run_script(*args, '--outdir', tmp_path / 'out')
  assert result.returncode != 0
  assert message in result.stderr
  assert 'Traceback' not in result.stderr
  if case != 'bad_bins':  # argparse adds its usage line.
    assert result.stderr.count('\n') == 1, result.stderr


def test_an_unreadable_line_is_skipped_with_a_warning(tmp_path):
  logdir = tmp_path / 'atari_pong' / 'mine' / '1'
  write_run(logdir, [{'step': 1, 'eval_return': 1.0}, '{"step": 2, "eval_re',
                     {'step': 3, 'eval_return': 3.0}])
  result = run_script('--indir', tmp_path, '--outdir', tmp_path / 'out')
  assert result.returncode == 0, result.stderr
  assert result.stderr.strip() == (
      f'plot.py: warning: skipping unreadable line 2 of '
      f'{logdir / "metrics.jsonl"}')
  (curve,) = json.loads((tmp_path / 'out' / 'curves.json').read_text())
  assert curve['xs'] == [1, 3] and curve['ys'] == [1, 3]


def published_band(seeds=5):
  """Synthetic published seeds binned at 10 frames: seed k returns k at
  every bin edge 10, 20, ..., 100 (band [0, seeds - 1])."""
  return [{'task': 'atari_pong', 'method': 'dreamerv2', 'seed': str(k),
           'xs': np.arange(10., 101., 10.), 'ys': np.full(10, float(k))}
          for k in range(seeds)]


@pytest.mark.parametrize('level, word, rank', [
    (-1.0, 'below', 0), (2.5, 'within', 3), (7.0, 'above', 5)])
def test_compare_says_where_runs_stand_among_published_seeds(level, word, rank):
  # Two run seeds evaluated every 5 frames up to 60, around `level`: their
  # binned value at 60 is the mean over (50, 60], i.e. `level` itself.
  runs = [{'task': 'atari_pong', 'method': 'mine', 'seed': str(s),
           'xs': np.arange(5., 61., 5.), 'ys': np.full(12, level + d)}
          for s, d in ((0, -0.5), (1, 0.5))]
  result = plot.compare(runs, published_band())
  (row,) = result['rows']
  assert row['bins'] == 10 and row['frames'] == 60  # All seeds reached 60.
  assert [p['frames'] for p in row['points']] == [10, 20, 30, 40, 50, 60]
  last = row['points'][-1]
  assert last['runs'] == {'0': level - 0.5, '1': level + 0.5}
  assert last['runs_mean'] == pytest.approx(level)
  assert last['published'] == {'median': 2.0, 'min': 0.0, 'max': 4.0}
  assert (last['verdict'], last['rank'], row['verdict']) == (word, rank, word)


def test_compare_uses_the_bin_ending_at_each_frame_count():
  runs = [{'task': 'atari_pong', 'method': 'mine', 'seed': '0',
           'xs': np.array([12., 18., 21., 30.]),
           'ys': np.array([1., 3., 5., 9.])}]
  (row,) = plot.compare(runs, published_band(), at=[20, 25])['rows']
  # (10, 20] holds 12 and 18; with --compare_at 25, (15, 25] holds 18 and 21.
  assert [p['runs_mean'] for p in row['points']] == [2.0, 4.0]


def test_compare_lists_unpublished_tasks_and_runs_too_short():
  runs = [
      {'task': 'atari_unknown', 'method': 'mine', 'seed': '0',
       'xs': np.array([10.]), 'ys': np.array([1.])},
      {'task': 'atari_pong', 'method': 'short', 'seed': '0',
       'xs': np.array([5.]), 'ys': np.array([1.])}]
  result = plot.compare(runs, published_band())
  assert result['rows'] == [] and result['unpublished'] == ['atari_unknown']
  ((task, method, reason),) = result['short']
  assert (task, method) == ('atari_pong', 'short')
  assert 'reach 5 frames, before the first published point at 10' in reason


def test_compare_a_copy_of_a_published_pong_seed_is_within(tmp_path):
  published = plot.load_scores(SCORES / 'atari-dreamerv2.json')
  seed = next(c for c in published if c['task'] == 'atari_pong')
  copy = {'task': 'atari_pong', 'method': 'copy', 'seed': '0',
          'xs': seed['xs'][:10].tolist(), 'ys': seed['ys'][:10].tolist()}
  (tmp_path / 'runs.json').write_text(json.dumps([copy]))
  result = run_script(
      '--indir', tmp_path / 'runs.json', '--outdir', tmp_path / 'out',
      '--compare', SCORES / 'atari-dreamerv2.json')
  assert result.returncode == 0, result.stderr
  table = [line.split() for line in result.stdout.splitlines()
           if line.startswith('atari_pong')]
  # Bins of 1M frames (the file's own), every 1M frames up to 10M.
  assert [float(line[2]) for line in table] == [i * 1e6 for i in range(1, 11)]
  assert {line[-1] for line in table} == {'within'}
  written = json.loads((tmp_path / 'out' / 'curves_compare.json').read_text())
  (row,) = written['rows']
  assert row['published_seeds'] == 11 and row['verdict'] == 'within'
  # The published curves are drawn beside the run.
  curves = json.loads((tmp_path / 'out' / 'curves.json').read_text())
  assert {c['method'] for c in curves} == {'copy', 'dreamerv2', 'nosched'}


def test_compare_with_no_comparable_run_is_one_line(tmp_path):
  synthetic_tree(tmp_path / 'logdir', tasks=('crafter_reward',),
                 methods=('mine',), seeds=(1,))
  result = run_script('--indir', tmp_path / 'logdir',
                      '--outdir', tmp_path / 'out',
                      '--compare', SCORES / 'atari-dreamerv2.json')
  assert result.returncode == 2 and 'Traceback' not in result.stderr
  assert 'no run could be compared' in result.stderr
  assert ('crafter_reward' in result.stderr
          and 'no published curve' in result.stderr)


# Crafter score ---------------------------------------------------------------

def write_crafter_run(logdir, episodes, task='crafter_reward', action_repeat=1,
                      config=True):
  """A run's train episodes as replay.py writes them. Each episode is
  (agent steps, achievements unlocked[, finished]); an unlocked
  achievement's count (Crafter's per-episode total) turns 1 halfway and 2 at
  the end, the others stay 0."""
  from common import replay
  directory = logdir / 'train_episodes'
  directory.mkdir(parents=True)
  if config:
    (logdir / 'config.yaml').write_text(
        f'logdir: {logdir}\nseed: 0\ntask: {task}\nenvs: 1\n'
        f'action_repeat: {action_repeat}\n'
        'replay: {capacity: 2000000, ongoing: false}\n')
  names = []
  for length, unlocked, *finished in episodes:
    episode = {
        'action': np.zeros((length + 1, 17), np.float32),
        'reward': np.zeros(length + 1, np.float32),
        'is_first': np.arange(length + 1) == 0,
        'is_last': np.arange(length + 1) == (
            length if not finished or finished[0] else -1)}
    for name in plot.CRAFTER_ACHIEVEMENTS:
      count = np.zeros(length + 1, np.int32)
      if name in unlocked:
        count[length // 2:] = 1
        count[-1] = 2
      episode[f'log_achievement_{name}'] = count
    names.append(replay.save_episode(directory, episode).name)
  assert sorted(names) == names  # File names sort by time.
  return logdir


def test_crafter_achievements_are_crafters_own():
  assert len(plot.CRAFTER_ACHIEVEMENTS) == 22
  crafter = pytest.importorskip('crafter')
  assert list(plot.CRAFTER_ACHIEVEMENTS) == crafter.constants.achievements


def test_crafter_score_is_the_geometric_mean_with_an_offset_of_one():
  # exp(mean_i ln(1 + s_i)) - 1 over the 22 rates in percent, by hand.
  assert plot.crafter_score([0] * 22) == 0
  assert plot.crafter_score([100] * 22) == pytest.approx(100)
  one = math.exp(math.log(101) / 22) - 1
  assert one == pytest.approx(0.23340, abs=1e-5)
  assert plot.crafter_score([100] + [0] * 21) == pytest.approx(one)
  # Half at 50%: exp(ln(51) / 2) - 1 = sqrt(51) - 1.
  assert plot.crafter_score([50] * 11 + [0] * 11) == pytest.approx(
      math.sqrt(51) - 1)
  with pytest.raises(ValueError):
    plot.crafter_score([0.5, 101])


def test_crafter_success_rates_of_synthetic_episodes(tmp_path):
  logdir = write_crafter_run(tmp_path / 'crafter_reward' / 'mine' / '0', [
      (100, {'collect_wood', 'place_table', 'collect_diamond'}),
      (120, {'collect_wood', 'place_table'}),
      (80, {'collect_wood'}),
      (90, {'collect_wood'}),
  ])
  result = plot.crafter_scores([tmp_path])
  (run,) = result['runs']
  assert (run['task'], run['method'], run['seed']) == (
      'crafter_reward', 'mine', '0')
  assert run['logdir'] == str(logdir)
  assert (run['episodes'], run['env_steps']) == (4, 390)
  rates = run['success_rates']
  assert list(rates) == list(plot.CRAFTER_ACHIEVEMENTS)
  assert (rates['collect_wood'], rates['place_table'],
          rates['collect_diamond']) == (100, 50, 25)
  assert sum(rates.values()) == 175  # The other 19 are 0.
  by_hand = math.exp(
      (math.log(101) + math.log(51) + math.log(26)) / 22) - 1
  assert by_hand == pytest.approx(0.71017, abs=1e-5)
  assert run['score'] == pytest.approx(by_hand)
  (summary,) = result['methods']
  assert summary['seeds'] == 1 and summary['score_std'] == 0
  assert summary['score_mean'] == pytest.approx(by_hand)


def test_crafter_budget_counts_env_steps_in_order(tmp_path):
  # 150 agent steps × action_repeat 2 = 300 env steps an episode.
  episodes = [(150, {'collect_wood'}), (150, set()), (150, {'eat_cow'}),
              (150, {'wake_up'})]
  write_crafter_run(tmp_path / 'run', episodes, action_repeat=2)
  # Cumulative 300, 600, 900, 1200: a budget of 900 keeps the first three,
  # as Crafter's read_metrics stops at the episode that goes past it.
  (run,) = plot.crafter_scores([tmp_path / 'run'], budget=900)['runs']
  assert (run['action_repeat'], run['episodes'], run['env_steps']) == (
      2, 3, 900)
  rates = run['success_rates']
  assert rates['collect_wood'] == rates['eat_cow'] == pytest.approx(100 / 3)
  assert rates['wake_up'] == 0
  (run,) = plot.crafter_scores([tmp_path / 'run'], budget=899)['runs']
  assert run['episodes'] == 2 and run['success_rates']['eat_cow'] == 0
  (run,) = plot.crafter_scores([tmp_path / 'run'])['runs']  # Default 1M.
  assert run['episodes'] == 4 and run['success_rates']['wake_up'] == 25


def test_crafter_an_episode_cut_at_a_stop_spends_steps_only(tmp_path):
  write_crafter_run(tmp_path / 'run', [
      (100, {'collect_wood'}), (50, {'collect_wood'}, False),
      (100, set()), (100, {'collect_wood'})])
  (run,) = plot.crafter_scores([tmp_path / 'run'], budget=250)['runs']
  assert (run['episodes'], run['unfinished_episodes']) == (2, 1)
  assert run['env_steps'] == 250
  assert run['success_rates']['collect_wood'] == 50


def test_crafter_score_reads_crafters_own_stats_where_the_run_has_them(
    tmp_path):
  # The replay keeps only episodes of replay.minlen steps or more; Crafter's
  # recorder writes every one, and Crafter's analysis reads that file.
  logdir = write_crafter_run(tmp_path / 'run', [(100, {'collect_wood'})])
  rows = [{'length': 30, 'reward': 0.0}, {'length': 100, 'reward': 1.0},
          {'length': 40, 'reward': 0.0}]
  for row, wood in zip(rows, (0, 2, 1)):
    row.update({f'achievement_{name}': 0 for name in plot.CRAFTER_ACHIEVEMENTS})
    row['achievement_collect_wood'] = wood
  (logdir / 'crafter').mkdir()
  (logdir / 'crafter' / 'stats.jsonl').write_text(
      ''.join(json.dumps(row) + '\n' for row in rows))
  (run,) = plot.crafter_scores([logdir])['runs']
  assert (run['source'], run['episodes'], run['env_steps']) == (
      'stats.jsonl', 3, 170)
  assert run['success_rates']['collect_wood'] == pytest.approx(200 / 3)
  (run,) = plot.crafter_scores([logdir], budget=130)['runs']
  assert run['episodes'] == 2 and run['success_rates']['collect_wood'] == 50
  (logdir / 'crafter' / 'stats.jsonl').write_text('{"length": 3')
  with pytest.raises(plot.PlotError, match=r'stats.jsonl:1 is not a line'):
    plot.crafter_scores([logdir])


def test_crafter_stats_of_the_env_are_what_the_score_reads(tmp_path):
  pytest.importorskip('crafter')
  from common import envs
  env = envs.make('crafter_reward', 'train', seed=0, outdir=tmp_path / 'run'
                  / 'crafter', time_limit=0)
  rng = np.random.default_rng(0)
  obs, steps = env.reset(), 0
  n = env.act_space['action'].shape[0]
  while not obs['is_last']:  # A random agent dies within some hundred steps.
    obs = env.step({'action': np.eye(n, dtype=np.float32)[rng.integers(n)]})
    steps += 1
  env.close()
  episodes = plot.read_crafter_stats(tmp_path / 'run')
  assert len(episodes) == 1 and episodes[0]['length'] == steps
  assert episodes[0]['unlocked'].shape == (22,)


def test_crafter_scores_over_seeds(tmp_path):
  # Seed k unlocks collect_wood in k of its 4 episodes: 25k %.
  for k in (1, 2, 4):
    write_crafter_run(
        tmp_path / 'crafter_reward' / 'mine' / str(k),
        [(100, {'collect_wood'} if e < k else set()) for e in range(4)])
  write_crafter_run(tmp_path / 'crafter_noreward' / 'other' / '0',
                    [(100, set())], task='crafter_noreward')
  result = plot.crafter_scores([tmp_path])
  assert [(r['method'], r['seed']) for r in result['runs']] == [
      ('other', '0'), ('mine', '1'), ('mine', '2'), ('mine', '4')]
  scores = [math.exp(math.log(1 + 25 * k) / 22) - 1 for k in (1, 2, 4)]
  assert [r['score'] for r in result['runs'][1:]] == pytest.approx(scores)
  other, mine = result['methods']
  assert (other['task'], other['score_mean']) == ('crafter_noreward', 0)
  assert mine['seeds'] == 3
  assert mine['score_mean'] == pytest.approx(sum(scores) / 3)
  # Population std over seeds, as Crafter's print_scores (numpy's nanstd).
  mean = sum(scores) / 3
  std = math.sqrt(sum((s - mean) ** 2 for s in scores) / 3)
  assert mine['score_std'] == pytest.approx(std)
  assert mine['success_rates']['collect_wood'] == pytest.approx(175 / 3)


def test_crafter_score_command_prints_the_table_and_json(tmp_path):
  for seed in (0, 1):
    write_crafter_run(tmp_path / 'logdir' / 'crafter_reward' / 'mine' /
                      str(seed), [(200, {'collect_wood'}), (200, set())])
  result = run_script('--crafter_score', tmp_path / 'logdir', '--json',
                      '--crafter_budget', '400', '--outdir', tmp_path / 'out')
  assert result.returncode == 0, result.stderr
  assert result.stderr == ''  # Both seeds reach the budget: no warning.
  (line,) = result.stdout.splitlines()
  printed = json.loads(line)
  assert list(printed) == [
      'budget', 'achievements', 'runs', 'methods', 'published']
  assert printed['budget'] == 400
  assert printed['achievements'] == list(plot.CRAFTER_ACHIEVEMENTS)
  assert set(printed['runs'][0]) == {
      'task', 'method', 'seed', 'logdir', 'action_repeat', 'source', 'episodes',
      'unfinished_episodes', 'env_steps', 'success_rates', 'score'}
  (mine,) = printed['methods']
  assert set(mine) == {'task', 'method', 'seeds', 'score_mean', 'score_std',
                       'success_rates'}
  assert mine['score_mean'] == pytest.approx(math.exp(math.log(51) / 22) - 1)
  assert mine['success_rates']['collect_wood'] == 50
  published = {row['method']: (row['score'], row['std'])
               for row in printed['published']['methods']}
  assert published == {
      'Human experts': (50.5, 6.8), 'DreamerV2': (10.0, 1.2),
      'PPO': (4.6, 0.3), 'Rainbow': (4.3, 0.2), 'Plan2Explore': (2.1, 0.1),
      'RND': (2.0, 0.1), 'Random': (1.6, 0.0)}
  assert 'danijar/crafter' in printed['published']['source']
  written = json.loads((tmp_path / 'out' / 'curves_crafter.json').read_text())
  assert written == printed
  # The table: 22 rates per seed and their mean, then the scores.
  result = run_script('--crafter_score', tmp_path / 'logdir',
                      '--crafter_budget', '400')
  assert result.returncode == 0, result.stderr
  rows = {line.split()[0]: line.split()[1:]
          for line in result.stdout.splitlines() if line.strip()}
  assert rows['collect_wood'] == ['50.0', '50.0', '50.0']
  assert rows['wake_up'] == ['0.0', '0.0', '0.0']
  assert rows['episodes'] == ['2', '2']
  assert 'score over 2 seeds: 0.2 ± 0.0 %' in result.stdout
  assert any(line.split()[:4] == ['DreamerV2', 'crafter_reward', '10.0', '±']
             for line in result.stdout.splitlines())


def test_crafter_score_warns_of_a_run_short_of_the_budget(tmp_path):
  write_crafter_run(tmp_path / 'run', [(100, set())])
  result = run_script('--crafter_score', tmp_path / 'run', '--json')
  assert result.returncode == 0, result.stderr
  assert result.stderr.count('\n') == 1
  assert 'holds episodes of 100 env steps within the budget of' in (
      result.stderr)


@pytest.mark.parametrize('case, message', [
    ('missing', 'is not a directory'),
    ('no_train_episodes', 'has no episodes: no train_episodes/'),
    ('no_files', 'has no episodes: no .npz file'),
    ('atari_config', 'is not a Crafter run: its config.yaml has task '
                     'atari_pong'),
    ('no_achievements', 'is not a Crafter run: its episode'),
])
def test_crafter_bad_input_exits_2_with_one_line(tmp_path, case, message):
  logdir = tmp_path / 'logdir'
  if case == 'no_train_episodes':
    write_run(logdir, [{'step': 1, 'eval_return': 1.0}])
  elif case == 'no_files':
    (logdir / 'train_episodes').mkdir(parents=True)
  elif case == 'atari_config':
    write_crafter_run(logdir, [(10, set())], task='atari_pong',
                      action_repeat=4)
  elif case == 'no_achievements':
    from common import replay
    (logdir / 'train_episodes').mkdir(parents=True)
    replay.save_episode(logdir / 'train_episodes', {
        'action': np.zeros((11, 6), np.float32),
        'is_last': np.arange(11) == 10})
  result = run_script('--crafter_score', logdir)
  assert result.returncode == 2, result.stderr
  assert message in result.stderr and str(logdir) in result.stderr
  assert 'Traceback' not in result.stderr
  assert result.stderr.count('\n') == 1, result.stderr
