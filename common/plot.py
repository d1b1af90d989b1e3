"""Learning curves and normalised scores from runs and published score files.

  python3 common/plot.py --indir ~/logdir --outdir ~/plots --bins 1e6
  python3 common/plot.py --indir ~/logdir --outdir ~/plots \
      --baselines scores/atari-dreamerv2.json --stats
  python3 common/plot.py --baselines scores/atari-dreamerv2.json \
      --tasks atari_pong --outdir /tmp/p
  python3 common/plot.py --indir ~/logdir --outdir ~/plots \
      --compare scores/atari-dreamerv2.json
  python3 common/plot.py --crafter_score ~/logdir/crafter_reward [--json]

With --compare, a table (and <name>_compare.json) says per task and method
where the runs stand among the published seeds: below, within or above their
range, at the largest frame count every seed reached and at earlier bin
edges (see `compare`). --indir also takes score files of runs (.json).

With --crafter_score, Crafter's own metric of every run in or under the
logdirs (a run: a directory with train_episodes/): each achievement's success
rate, the percent of the train episodes within --crafter_budget env steps
(default 1M) that unlocked it, and the score exp(mean ln(1 + rate)) - 1, per
seed and over seeds, beside the Crafter authors' published scores (see
`crafter_scores`). Bad input there exits 2.

A run is read from .../<task>/<method>/<seed>/metrics.jsonl. Every curve, read
or written, is {task, method, seed, xs, ys}: the format of the published score
files in scores/. Writes <name>.png, <name>.pdf and <name>.json (every curve
drawn, binned) into --outdir, and <name>_stats.json with --stats.

Binning: --bins b cuts the x axis into intervals (x - b, x] at multiples x of b.
A binned curve has one point per non-empty interval: the mean of the run's
values in it, placed at the interval's upper edge x. The published files are
binned this way (xs 1e6, 2e6, ... for b = 1e6), so binning them again with the
same b leaves them unchanged.

Runs as a script from the repository root: of this project it imports only
common/errors.py, and never TensorFlow.
"""

import argparse
import collections
import json
import math
import pathlib
import re
import sys

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from common import errors  # noqa: E402
CURVE_KEYS = ('task', 'method', 'seed', 'xs', 'ys')
REFERENCE_KEYS = ('random', 'human_gamer', 'human_record')
STATS = ('gamer_median', 'gamer_mean', 'record_mean', 'clipped_record_mean')
COLORS = (
    '#377eb8', '#e41a1c', '#4daf4a', '#984ea3', '#ff7f00', '#a65628',
    '#f781bf', '#17becf', '#999999', '#bcbd22', '#1b2a6b', '#7f0000')


class PlotError(errors.UsageError):
  """Bad input: one line, exit 2 (common/errors.py)."""


def warn(message):
  print(f'plot.py: warning: {message}', file=sys.stderr)


# Reading ---------------------------------------------------------------------

def find_metrics(indirs):
  """Every metrics.jsonl under each directory, each file once."""
  filenames = {}
  for indir in indirs:
    indir = pathlib.Path(indir).expanduser()
    if not indir.is_dir():
      raise PlotError(f'--indir {indir} is not a directory.')
    found = sorted(indir.rglob('metrics.jsonl'))
    if not found:
      raise PlotError(
          f'No metrics.jsonl under {indir} (runs are read from '
          '<task>/<method>/<seed>/metrics.jsonl).')
    for filename in found:
      filenames.setdefault(filename.resolve(), filename)
  return list(filenames.values())


def run_name(filename):
  """(task, method, seed) from .../<task>/<method>/<seed>/metrics.jsonl."""
  seed_dir = pathlib.Path(filename).absolute().parent
  return seed_dir.parent.parent.name, seed_dir.parent.name, seed_dir.name


def read_metrics(filename, xkey, ypattern):
  """{ykey: (xs, ys)} for each key matching ypattern, and every key seen.

  Only lines holding both x and y count; unreadable lines are skipped with a
  warning naming the file and line.
  """
  series = collections.defaultdict(lambda: ([], []))
  matches = {}  # key -> whether it matches ypattern; also every key seen.
  with open(filename, errors='replace') as lines:
    for number, line in enumerate(lines, 1):
      if not line.strip():
        continue
      try:
        record = json.loads(line)
        if not isinstance(record, dict):
          raise ValueError(line)
      except ValueError:
        warn(f'skipping unreadable line {number} of {filename}')
        continue
      x = record.get(xkey)
      has_x = is_number(x)
      for key, y in record.items():
        match = matches.get(key)
        if match is None:
          match = matches[key] = key != xkey and bool(ypattern.fullmatch(key))
        if match and has_x and is_number(y):
          series[key][0].append(x)
          series[key][1].append(y)
  return dict(series), set(matches)


def is_number(value):
  return (isinstance(value, (int, float)) and not isinstance(value, bool)
          and math.isfinite(value))


def load_runs(indirs, xkey, yaxis, tasks=None, methods=None):
  """Curves of every run under the directories, not binned yet.

  When yaxis matches several keys, each key is its own curve, labelled
  '<method> <key>'.
  """
  ypattern = re.compile(yaxis)
  runs, keys_seen, chosen = [], set(), 0
  for filename in find_metrics(indirs):
    task, method, seed = run_name(filename)
    if not selected(task, tasks) or not selected(method, methods):
      continue
    chosen += 1
    try:
      series, keys = read_metrics(filename, xkey, ypattern)
    except OSError as error:
      warn(f'skipping unreadable file {filename}: {error.strerror}')
      continue
    keys_seen |= keys
    for ykey, (xs, ys) in series.items():
      runs.append(dict(task=task, method=method, seed=seed, ykey=ykey,
                       xs=np.array(xs, float), ys=np.array(ys, float)))
  if not chosen:
    raise PlotError('No runs left after --tasks / --methods.')
  if not runs and keys_seen:
    shown = ', '.join(sorted(keys_seen)[:20])
    raise PlotError(
        f"No run has values for --yaxis '{yaxis}' against --xaxis '{xkey}' "
        f'(keys in the runs: {shown}).')
  if not runs:
    raise PlotError('The metrics files hold no readable lines.')
  if len({run['ykey'] for run in runs}) > 1:
    for run in runs:
      run['method'] = f"{run['method']} {run['ykey']}"
  for run in runs:
    del run['ykey']
  return runs


def load_scores(filename):
  """Curves from a published score file: a list of
  {task, method, seed, xs, ys}."""
  try:
    curves = json.loads(pathlib.Path(filename).expanduser().read_text())
  except OSError as error:
    raise PlotError(f'Cannot read {filename}: {error.strerror}.')
  except ValueError:
    raise PlotError(f'{filename} is not a JSON file.')
  message = (f'{filename} is not a score file: expected a list of '
             '{task, method, seed, xs, ys} with numbers in xs and ys.')
  if not isinstance(curves, list):
    raise PlotError(message)
  loaded = []
  for curve in curves:
    try:
      xs, ys = np.array(curve['xs'], float), np.array(curve['ys'], float)
      if xs.shape != ys.shape or xs.ndim != 1:
        raise ValueError(xs.shape, ys.shape)
      keep = np.isfinite(xs) & np.isfinite(ys)
      loaded.append(dict(
          task=str(curve['task']), method=str(curve['method']),
          seed=str(curve['seed']), xs=xs[keep], ys=ys[keep]))
    except (KeyError, TypeError, ValueError):
      raise PlotError(message)
  return loaded


def load_reference(filename):
  """Per task {random, human_gamer, human_record}, as in
  scores/baselines.json."""
  try:
    reference = json.loads(pathlib.Path(filename).expanduser().read_text())
  except OSError as error:
    raise PlotError(f'Cannot read --stats_baselines {filename}: '
                    f'{error.strerror}.')
  except ValueError:
    raise PlotError(f'--stats_baselines {filename} is not a JSON file.')
  if not isinstance(reference, dict):
    raise PlotError(f'--stats_baselines {filename} should map tasks to '
                    'scores, like scores/baselines.json.')
  return {task: scores for task, scores in reference.items()
          if isinstance(scores, dict)
          and all(is_number(scores.get(k)) for k in REFERENCE_KEYS)}


def selected(name, patterns):
  return not patterns or any(re.fullmatch(p, name) for p in patterns)


# Curves ----------------------------------------------------------------------

def bin_curve(xs, ys, bins):
  """Mean of ys per interval (x - bins, x], at the upper edges x (see top).

  Without bins (None or 0) the points are only sorted by x.
  """
  xs, ys = np.asarray(xs, float), np.asarray(ys, float)
  if not bins:
    order = np.argsort(xs, kind='stable')
    return xs[order], ys[order]
  # The tolerance keeps a point exactly on an edge (x = k·bins) in bin k.
  index = np.ceil(xs / bins - 1e-9).astype(np.int64)
  edges, position = np.unique(index, return_inverse=True)
  means = np.bincount(position, ys) / np.bincount(position)
  return edges * float(bins), means


def aggregate(curves, agg):
  """Seeds of one method on one task -> xs, line, band low, band high.

  The xs are every x of any seed; a seed counts at the xs within its own
  range (on a shared bin grid that is its own value; elsewhere interpolated
  linearly), so a seed that stopped early drops out of the later points.
  agg: 'stdK' mean ± K std over seeds (population std), 'perK' median with
  the K-th and (100-K)-th percentiles.
  """
  xs = np.unique(np.concatenate([xs for xs, _ in curves]))
  values = np.full((len(curves), len(xs)), np.nan)
  for row, (cx, cy) in zip(values, curves):
    inside = (xs >= cx[0]) & (xs <= cx[-1])
    row[inside] = np.interp(xs[inside], cx, cy)
  kind, amount = parse_agg(agg)
  if kind == 'std':
    mean, std = np.nanmean(values, 0), np.nanstd(values, 0)
    return xs, mean, mean - amount * std, mean + amount * std
  low, median, high = np.nanpercentile(values, [amount, 50, 100 - amount], 0)
  return xs, median, low, high


def parse_agg(agg):
  """'std1' -> ('std', 1.0), 'per25' -> ('per', 25.0),
  'none' -> (None, None)."""
  if agg == 'none':
    return None, None
  match = re.fullmatch(r'(std|per)(\d+(?:\.\d*)?)', agg)
  if not match or (match[1] == 'per' and not float(match[2]) < 50):
    raise ValueError(agg)
  return match[1], float(match[2])


def group(curves):
  """{(task, method): [curve, ...]} in the order the curves come."""
  groups = collections.defaultdict(list)
  for curve in curves:
    groups[curve['task'], curve['method']].append(curve)
  return groups


# Normalised scores -----------------------------------------------------------

def final_scores(curves):
  """{(task, method): mean over seeds of each seed's last point}."""
  return {key: float(np.mean([c['ys'][-1] for c in seeds]))
          for key, seeds in group(curves).items() if seeds[0]['ys'].size}


def normalised_scores(curves, reference):
  """Per method, over the tasks that have reference scores:

    gamer-normalised  = (score - random) / (human_gamer - random)
    record-normalised = (score - random) / (human_record - random)
    clipped record    = min(1, record-normalised)

  Returns a list of {method, tasks, gamer_median, gamer_mean, record_mean,
  clipped_record_mean} and the tasks left out for lacking reference scores.
  """
  gamer, record = collections.defaultdict(list), collections.defaultdict(list)
  missing = set()
  for (task, method), score in final_scores(curves).items():
    if task not in reference:
      missing.add(task)
      continue
    random = reference[task]['random']
    gamer[method].append(
        (score - random) / (reference[task]['human_gamer'] - random))
    record[method].append(
        (score - random) / (reference[task]['human_record'] - random))
  results = []
  for method in gamer:
    results.append(dict(
        method=method, tasks=len(gamer[method]),
        gamer_median=float(np.median(gamer[method])),
        gamer_mean=float(np.mean(gamer[method])),
        record_mean=float(np.mean(record[method])),
        clipped_record_mean=float(np.mean(np.minimum(1, record[method])))))
  return results, sorted(missing)


def stats_table(stats):
  header = f"{'method':<24} {'tasks':>5}" + ''.join(f' {s:>19}' for s in STATS)
  rows = [f"{s['method']:<24} {s['tasks']:>5}"
          + ''.join(f' {s[k]:>19.3f}' for k in STATS) for s in stats]
  return '\n'.join([header] + rows)


# Comparison with published seeds ---------------------------------------------

def value_at(xs, ys, x):
  """A curve's value at x, linear between its points; None outside its range."""
  xs, ys = np.asarray(xs, float), np.asarray(ys, float)
  if not xs.size or x < xs[0] - 1e-9 or x > xs[-1] + 1e-9:
    return None
  return float(np.interp(x, xs, ys))


def window_mean(xs, ys, x, width):
  """Mean of the points in (x - width, x]: a run's binned value at x. None
  when the window is empty."""
  xs, ys = np.asarray(xs, float), np.asarray(ys, float)
  inside = (xs > x - width + 1e-9) & (xs <= x + 1e-9)
  return float(ys[inside].mean()) if inside.any() else None


def published_values(curves, x):
  """Each published seed's value at x (its binned value on a bin edge,
  interpolated between edges); seeds whose curve does not reach x drop out."""
  values = [value_at(c['xs'], c['ys'], x) for c in curves]
  return [v for v in values if v is not None]


def summarize(values):
  return {'median': float(np.median(values)), 'min': float(np.min(values)),
          'max': float(np.max(values))}


def bin_width(curves):
  """The bin width of binned curves: the most common spacing of their xs."""
  steps = np.concatenate([np.diff(np.asarray(c['xs'], float)) for c in curves])
  steps = steps[steps > 0]
  if not steps.size:
    return None
  values, counts = np.unique(np.round(steps, 6), return_counts=True)
  return float(values[np.argmax(counts)])


def compare_points(final, width, count=10):
  """Frame counts to compare at: bin edges up to `final` (at most `count`,
  evenly spaced, the last one `final` itself)."""
  edges = np.arange(1, int(final // width + 1e-9) + 1) * width
  if len(edges) > count:
    edges = edges[np.linspace(0, len(edges) - 1, count).round().astype(int)]
  points = [float(x) for x in edges if x < final - 1e-9] + [float(final)]
  return sorted(set(points))


def verdict(value, published):
  if value < min(published):
    return 'below'
  if value > max(published):
    return 'above'
  return 'within'


def compare(runs, published, at=None, bins=None):
  """Where runs stand among published seeds, per task and method.

  runs, published: curves {task, method, seed, xs, ys} (runs may be unbinned;
  all published methods of a task are pooled as its seeds). Each run seed's
  value at frame x is its mean over (x - bins, x], the bin that ends at x;
  each published seed's value is its curve at x (its binned value at a bin
  edge). bins defaults to the published curves' own bin width. at: frame
  counts to compare at (default: bin edges up to the largest frame count
  that every seed of the task reached, that count included).

  Returns {'rows': [...], 'unpublished': tasks without a published curve,
  'short': [(task, method, reason)] for runs that reach no published point}.
  Each row: task, method, seeds, published_seeds, bins, points (frames,
  runs_mean, runs per seed, published median/min/max, rank = published seeds
  below the runs' mean, verdict) and the last point's verdict.
  """
  by_task = collections.defaultdict(list)
  for curve in published:
    by_task[curve['task']].append(curve)
  rows, unpublished, short = [], [], []
  for (task, method), seeds in group(runs).items():
    reference = by_task.get(task)
    if not reference:
      unpublished.append(task)
      continue
    width = bins or bin_width(reference)
    first = min(float(c['xs'][0]) for c in reference if len(c['xs']))
    reached = min(float(np.max(c['xs'])) for c in seeds if len(c['xs']))
    if reached < first - 1e-9:
      short.append((task, method, (
          f'the runs reach {reached:g} frames, before the first published '
          f'point at {first:g}')))
      continue
    points = sorted(at) if at else compare_points(reached, width)
    rows_points = []
    for x in points:
      values = {str(c['seed']): window_mean(c['xs'], c['ys'], x, width)
                for c in seeds}
      values = {seed: v for seed, v in values.items() if v is not None}
      others = published_values(reference, x)
      if not values or not others:
        continue
      mean = float(np.mean(list(values.values())))
      rows_points.append({
          'frames': x, 'runs_mean': mean, 'runs': values,
          'published': summarize(others), 'published_seeds': len(others),
          'rank': int(sum(v < mean for v in others)),
          'verdict': verdict(mean, others)})
    if not rows_points:
      short.append((task, method, (
          f'no seed has a value in the bins ending at '
          f'{", ".join(f"{x:g}" for x in points)} frames')))
      continue
    rows.append({
        'task': task, 'method': method, 'seeds': len(seeds),
        'published_seeds': len(reference), 'bins': width,
        'points': rows_points, 'frames': rows_points[-1]['frames'],
        'verdict': rows_points[-1]['verdict']})
  return {'rows': rows, 'unpublished': sorted(set(unpublished)), 'short': short}


def compare_table(result):
  header = (f"{'task':<24} {'method':<20} {'frames':>8} {'runs':>9} "
            f"{'pub median':>10} {'pub min':>9} {'pub max':>9} "
            f"{'rank':>6}  verdict")
  lines = [header]
  for row in result['rows']:
    for point in row['points']:
      published = point['published']
      lines.append(
          f"{row['task']:<24} {row['method']:<20} {point['frames']:>8.3g} "
          f"{point['runs_mean']:>9.1f} {published['median']:>10.1f} "
          f"{published['min']:>9.1f} {published['max']:>9.1f} "
          f"{point['rank']:>3}/{point['published_seeds']:<2}  "
          f"{point['verdict']}")
  for task in result['unpublished']:
    lines.append(f'{task:<24} no published curve')
  for task, method, reason in result['short']:
    lines.append(f'{task:<24} {method:<20} not compared: {reason}')
  return '\n'.join(lines)


# Crafter score ---------------------------------------------------------------

# Crafter's 22 achievements, as in its data.yaml (crafter.constants).
CRAFTER_ACHIEVEMENTS = (
    'collect_coal', 'collect_diamond', 'collect_drink', 'collect_iron',
    'collect_sapling', 'collect_stone', 'collect_wood', 'defeat_skeleton',
    'defeat_zombie', 'eat_cow', 'eat_plant', 'make_iron_pickaxe',
    'make_iron_sword', 'make_stone_pickaxe', 'make_stone_sword',
    'make_wood_pickaxe', 'make_wood_sword', 'place_furnace', 'place_plant',
    'place_stone', 'place_table', 'wake_up')
CRAFTER_PUBLISHED = ROOT / 'scores' / 'crafter-baselines.json'
# Crafter's read_metrics.py skips runs with fewer env steps than this below
# the budget; here they are kept, with a warning.
CRAFTER_SHORT = 1e4


def find_crafter_runs(logdirs):
  """Run directories (those holding train_episodes/) under each logdir, each
  once, in order."""
  runs = {}
  for logdir in logdirs:
    logdir = pathlib.Path(logdir).expanduser()
    if not logdir.is_dir():
      raise PlotError(f'--crafter_score {logdir} is not a directory.')
    found = sorted(p.parent for p in logdir.rglob('train_episodes')
                   if p.is_dir())
    if not found:
      raise PlotError(
          f'{logdir} has no episodes: no train_episodes/ in it or below it.')
    for run in found:
      runs.setdefault(run.resolve(), run)
  return list(runs.values())


def read_run_config(logdir):
  """Top-level task and action_repeat of a run's config.yaml (None where the
  file or the key is missing), read without a YAML library."""
  values = {'task': None, 'action_repeat': None}
  try:
    text = (pathlib.Path(logdir) / 'config.yaml').read_text()
  except OSError:
    return values
  for key in values:
    match = re.search(rf'^{key}:[ \t]*(.*?)[ \t]*$', text, re.M)
    if match:
      values[key] = match[1].strip('\'"')
  return values


def read_crafter_episodes(logdir):
  """A run's train episodes, oldest first (file names start with the time):
  a list of {length, finished, unlocked}.

  length: agent steps (from the file name, as replay.py counts them);
  finished: whether the episode ended (is_last), not cut at a stop;
  unlocked: bool per achievement of CRAFTER_ACHIEVEMENTS, from the counts in
  log_achievement_* (Crafter's per-episode totals), or None when unreadable.
  """
  directory = pathlib.Path(logdir) / 'train_episodes'
  filenames = sorted(directory.glob('*.npz'))
  if not filenames:
    raise PlotError(
        f'{logdir} has no episodes: no .npz file in {directory}.')
  keys = [f'log_achievement_{name}' for name in CRAFTER_ACHIEVEMENTS]
  episodes = []
  for filename in filenames:
    try:
      length = int(filename.stem.rsplit('-', 1)[1])
    except (IndexError, ValueError):
      warn(f'skipping episode file {filename}: name is not '
           '<timestamp>-<id>-<length>.npz')
      continue
    unlocked, finished = None, False
    try:
      with np.load(filename, allow_pickle=False) as data:
        missing = [key for key in keys if key not in data.files]
        if missing:
          raise PlotError(
              f'{logdir} is not a Crafter run: its episode {filename.name} '
              f'has no {missing[0]} (nor {len(missing) - 1} more of the 22 '
              'achievements).')
        unlocked = np.array([data[key].max() > 0 for key in keys])
        finished = bool(data['is_last'][-1]) if 'is_last' in data else True
    except PlotError:
      raise
    except Exception as error:  # A broken file: its steps still count.
      warn(f'episode file {filename} is unreadable ({error}); its steps '
           'count towards the budget, the episode does not')
    episodes.append(
        {'length': length, 'finished': finished, 'unlocked': unlocked})
  if not episodes:
    raise PlotError(f'{logdir} has no readable episode file.')
  return episodes


def read_crafter_stats(logdir):
  """The episodes that Crafter's own recorder wrote to LOGDIR/crafter/
  stats.jsonl (the train envs', in the order they ended), as
  read_crafter_episodes gives them, or None without that file. This is what
  Crafter's analysis reads: every episode, also those shorter than
  replay.minlen, which the replay does not store. Lengths are env steps."""
  path = pathlib.Path(logdir) / 'crafter' / 'stats.jsonl'
  if not path.is_file():
    return None
  keys = [f'achievement_{name}' for name in CRAFTER_ACHIEVEMENTS]
  episodes = []
  for number, line in enumerate(path.read_text().splitlines(), 1):
    if not line.strip():
      continue
    try:
      row = json.loads(line)
      episodes.append({'length': int(row['length']), 'finished': True,
                       'unlocked': np.array([row[key] > 0 for key in keys])})
    except (ValueError, KeyError, TypeError) as error:
      # A line cut by a kill is the last one; anything else is not Crafter's.
      raise PlotError(f'{path}:{number} is not a line of Crafter\'s stats '
                      f'({type(error).__name__}: {error}).')
  return episodes or None


def crafter_success_rates(episodes, budget=1e6, action_repeat=1):
  """Success rate of each achievement in percent: the share of the episodes
  within the budget that unlocked it at least once, as Crafter's
  compute_success_rates.

  Episodes count in order while their cumulative env steps (length ×
  action_repeat) stay within the budget (Crafter's read_metrics stops at the
  first episode that goes past it). An episode cut at a stop or unreadable
  spends its steps but is no episode of the rates. Returns (rates, episodes
  counted, env steps up to the last counted one, other episodes in budget).
  """
  steps, counted, skipped, unlocked = 0, 0, 0, []
  for episode in episodes:
    steps_after = steps + episode['length'] * action_repeat
    if steps_after > budget:
      break
    steps = steps_after
    if episode['finished'] and episode['unlocked'] is not None:
      unlocked.append(episode['unlocked'])
      counted += 1
    else:
      skipped += 1
  if not unlocked:
    return None, 0, steps, skipped
  rates = 100 * np.mean(np.array(unlocked, float), 0)
  return rates, counted, steps, skipped


def crafter_score(rates):
  """Crafter score in percent: exp(mean_i ln(1 + s_i)) - 1 over the success
  rates s_i in percent, the geometric mean with an offset of 1% (Crafter's
  compute_scores), so rare achievements weigh more than common ones."""
  rates = np.asarray(rates, float)
  if rates.size == 0 or (rates < 0).any() or (rates > 100).any():
    raise ValueError(f'success rates must be percentages, got {rates}')
  return float(np.exp(np.mean(np.log1p(rates))) - 1)


def crafter_scores(logdirs, budget=1e6):
  """Success rates and score of every Crafter run under the logdirs, and per
  task and method their mean over seeds (population std, as Crafter's
  print_scores). Runs are named by their directory levels
  <task>/<method>/<seed>; the task is config.yaml's when it has one."""
  runs = []
  for logdir in find_crafter_runs(logdirs):
    config = read_run_config(logdir)
    task, method, seed = run_name(logdir / 'metrics.jsonl')
    task = config['task'] or task
    if config['task'] and not config['task'].startswith('crafter_'):
      raise PlotError(
          f'{logdir} is not a Crafter run: its config.yaml has task '
          f'{config["task"]}.')
    try:
      action_repeat = int(config['action_repeat'] or 1)
    except ValueError:
      raise PlotError(
          f'{logdir}: config.yaml has action_repeat '
          f'{config["action_repeat"]!r}, not a whole number.')
    # Crafter's own stats where the run has them (every episode, in env
    # steps); else the stored train episodes (agent steps).
    episodes, source, repeat = read_crafter_stats(logdir), 'stats.jsonl', 1
    if episodes is None:
      episodes, source = read_crafter_episodes(logdir), 'train_episodes'
      repeat = action_repeat
    rates, counted, steps, skipped = crafter_success_rates(
        episodes, budget, repeat)
    if rates is None:
      raise PlotError(
          f'{logdir} has no finished episode within the budget of '
          f'{budget:,.0f} env steps.')
    if steps < budget - CRAFTER_SHORT:
      warn(f'{logdir} holds episodes of {steps:,} env steps within the '
           f'budget of {budget:,.0f}: Crafter\'s read_metrics leaves out '
           'such runs, here it counts')
    runs.append({
        'task': task, 'method': method, 'seed': seed, 'logdir': str(logdir),
        'action_repeat': action_repeat, 'source': source, 'episodes': counted,
        'unfinished_episodes': skipped, 'env_steps': steps,
        'success_rates': dict(zip(CRAFTER_ACHIEVEMENTS, rates.tolist())),
        'score': crafter_score(rates)})
  runs.sort(key=lambda r: (r['task'], r['method'], seed_order(r['seed'])))
  methods = []
  for (task, method), seeds in group(runs).items():
    scores = [r['score'] for r in seeds]
    rates = np.mean([list(r['success_rates'].values()) for r in seeds], 0)
    methods.append({
        'task': task, 'method': method, 'seeds': len(seeds),
        'score_mean': float(np.mean(scores)),
        'score_std': float(np.std(scores)),
        'success_rates': dict(zip(CRAFTER_ACHIEVEMENTS, rates.tolist()))})
  return {'budget': budget, 'achievements': list(CRAFTER_ACHIEVEMENTS),
          'runs': runs, 'methods': methods}


def load_crafter_published(filename=CRAFTER_PUBLISHED):
  """{source, methods: [{method, task, score, std}]}: the Crafter authors'
  scores, as in scores/crafter-baselines.json."""
  try:
    published = json.loads(pathlib.Path(filename).read_text())
    if not isinstance(published['source'], str) or not all(
        isinstance(row['method'], str) and isinstance(row['task'], str)
        and is_number(row['score']) and is_number(row['std'])
        for row in published['methods']):
      raise ValueError(filename)
  except OSError as error:
    raise PlotError(f'Cannot read {filename}: {error.strerror}.')
  except (KeyError, TypeError, ValueError):
    raise PlotError(f'{filename} is not a table of published Crafter scores '
                    '({source, methods: [{method, task, score, std}]}).')
  return published


def crafter_table(result, published):
  """Per task and method: each achievement's success rate per seed and their
  mean, the scores, and the published scores beside them."""
  lines = []
  for summary in result['methods']:
    seeds = [r for r in result['runs'] if (r['task'], r['method']) == (
        summary['task'], summary['method'])]
    names = [r['seed'] for r in seeds]
    width = max(7, *(len(n) for n in names))
    lines.append(f"{summary['task']} {summary['method']}: success rates (%) "
                 f"within {result['budget']:,.0f} env steps")
    lines.append(f"{'achievement':<20}" + ''.join(
        f' {n:>{width}}' for n in names) + f" {'mean':>7}")
    for name in CRAFTER_ACHIEVEMENTS:
      lines.append(f'{name:<20}' + ''.join(
          f" {r['success_rates'][name]:>{width}.1f}" for r in seeds)
          + f" {summary['success_rates'][name]:>7.1f}")
    for label, key, form in (('episodes', 'episodes', 'd'),
                             ('env steps', 'env_steps', 'd')):
      lines.append(f'{label:<20}' + ''.join(
          f' {r[key]:>{width}{form}}' for r in seeds))
    lines.append(f"{'score (%)':<20}" + ''.join(
        f" {r['score']:>{width}.2f}" for r in seeds)
        + f" {summary['score_mean']:>7.2f}")
    lines.append(
        f"score over {summary['seeds']} seeds: {summary['score_mean']:.1f} ± "
        f"{summary['score_std']:.1f} % (mean ± population std)")
    lines.append('')
  lines.append('Crafter scores (%), mean ± std over seeds; the published '
               'ones from scores/crafter-baselines.json:')
  rows = [(row['score'], row['std'], row['method'], row['task'], 'published')
          for row in published['methods']]
  rows += [(s['score_mean'], s['score_std'], s['method'], s['task'],
            f"this run, {s['seeds']} seeds") for s in result['methods']]
  for score, std, method, task, origin in sorted(rows, key=lambda r: -r[0]):
    lines.append(f'  {method:<26} {task:<17} {score:>5.1f} ± {std:<4.1f}  '
                 f'{origin}')
  return '\n'.join(lines)


def run_crafter_score(args):
  """--crafter_score: prints the table (or, with --json, one JSON line) and
  writes <name>_crafter.json into --outdir when given."""
  result = crafter_scores(args.crafter_score, args.crafter_budget)
  published = load_crafter_published()
  result['published'] = published
  if args.outdir:
    filename = args.outdir / f'{args.name}_crafter.json'
    try:
      args.outdir.mkdir(parents=True, exist_ok=True)
      write_json(filename, result)
    except OSError as error:
      raise PlotError(f'Cannot write to --outdir {args.outdir}: '
                      f'{error.strerror}.')
  if args.json:
    print(json.dumps(result))
  else:
    print(crafter_table(result, published))
    if args.outdir:
      print(f'Wrote {filename}')


# Figure ----------------------------------------------------------------------

def plot(curves, tasks, methods, args, stats=None):
  """One panel per task (and one for the stats), one legend; PNG and PDF."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  from matplotlib import lines, ticker
  panels = len(tasks) + bool(stats)
  cols = max(1, min(args.cols, panels))
  rows = math.ceil(panels / cols)
  width, height = args.size
  legend_rows = math.ceil(len(methods) / max(cols, 4))
  legend_height = 0.3 * legend_rows + 0.2
  fig, axes = plt.subplots(
      rows, cols, figsize=(cols * width, rows * height + legend_height),
      squeeze=False)
  axes = axes.flatten()
  colors = {m: COLORS[i % len(COLORS)] for i, m in enumerate(methods)}
  groups = group(curves)
  for ax, task in zip(axes, tasks):
    for index, method in enumerate(methods):
      seeds = groups.get((task, method))
      if not seeds:
        continue
      color, zorder = colors[method], len(methods) - index  # Runs on top.
      if args.agg == 'none':
        for seed in seeds:
          ax.plot(seed['xs'], seed['ys'], color=color, lw=1, alpha=0.7,
                  zorder=zorder)
        continue
      xs, line, low, high = aggregate(
          [(c['xs'], c['ys']) for c in seeds], args.agg)
      ax.fill_between(xs, low, high, color=color, alpha=0.2, lw=0,
                      zorder=zorder)
      ax.plot(xs, line, color=color, lw=1.5, zorder=zorder)
    ax.set_title(task, fontsize='medium')
    ax.set_xlabel(args.xaxis)
    ax.xaxis.set_major_locator(ticker.MaxNLocator(5))
    ax.xaxis.set_major_formatter(ticker.EngFormatter(sep=''))
    ax.grid(alpha=0.3)
    ax.tick_params(labelsize='small')
    if args.xlim:
      ax.set_xlim(*args.xlim)
    if args.ylim:
      ax.set_ylim(*args.ylim)
  for ax in axes[:len(tasks):cols]:
    ax.set_ylabel(args.yaxis)
  if stats:
    draw_stats(axes[len(tasks)], stats, colors)
  for ax in axes[panels:]:
    ax.axis('off')
  handles = [lines.Line2D([], [], color=colors[m], lw=2, label=m)
             for m in methods]
  fig.legend(handles=handles, loc='lower center', frameon=False,
             ncol=min(len(methods), max(cols, 4)))
  # Fixed margins in inches: much faster than tight_layout for many panels.
  fig_width, fig_height = fig.get_size_inches()
  fig.subplots_adjust(
      left=0.75 / fig_width, right=1 - 0.2 / fig_width,
      bottom=(legend_height + 0.5) / fig_height, top=1 - 0.3 / fig_height,
      wspace=0.8 / (width - 0.8), hspace=0.85 / (height - 0.85))
  filenames = [args.outdir / f'{args.name}.png',
               args.outdir / f'{args.name}.pdf']
  for filename in filenames:
    fig.savefig(filename, dpi=110)
  plt.close(fig)
  return filenames


def draw_stats(ax, stats, colors):
  ax.axis('off')
  ax.set_title('normalised final scores', fontsize='medium')
  cells = [[s['method'], str(s['tasks'])] + [f'{s[k]:.3f}' for k in STATS]
           for s in stats]
  labels = ['method', 'tasks', 'gamer\nmedian', 'gamer\nmean', 'record\nmean',
            'clipped\nrecord\nmean']
  rows = len(stats) + 1.8  # The header holds up to three lines.
  height = min(1, 0.1 * rows)
  table = ax.table(
      cellText=cells, colLabels=labels, cellLoc='center',
      colWidths=[0.3, 0.1] + [0.15] * len(STATS),
      bbox=(0, 1 - height, 1, height))
  table.auto_set_font_size(False)
  table.set_fontsize(7)
  for (row, col), cell in table.get_celld().items():
    cell.set_height(1.8 if row == 0 else 1)  # Relative within the bbox.
    if row and col == 0:
      cell.set_facecolor(colors.get(cells[row - 1][0], 'w'))
      cell.get_text().set_color('w')


# Command line ----------------------------------------------------------------

def main(argv=None):
  args = parse_args(argv)
  with errors.exit_on_errors(prefix='plot.py: error'):
    run(args)


def run(args):
  if args.crafter_score:
    return run_crafter_score(args)
  if not args.indir and not args.baselines:
    raise PlotError('Nothing to plot: give --indir, --baselines or both.')
  # Read everything (and fail on bad input) before drawing anything.
  reference = load_reference(args.stats_baselines) if args.stats else None
  runs = []
  indirs = [path for path in args.indir or [] if path.suffix != '.json']
  if indirs:
    runs = load_runs(indirs, args.xaxis, args.yaxis, args.tasks,
                     args.methods)
  for filename in args.indir or []:
    if filename.suffix == '.json':  # A score file of runs, as plot.py writes.
      runs += [c for c in load_scores(filename)
               if selected(c['task'], args.tasks)
               and selected(c['method'], args.methods)]
  if args.indir and not runs:
    raise PlotError('No runs left after --tasks / --methods.')
  comparison = None
  if args.compare:
    if not runs:
      raise PlotError(
          '--compare needs runs: give --indir (logdirs or a score file).')
    comparison = compare(
        runs, load_scores(args.compare), args.compare_at, args.bins)
    if not comparison['rows']:
      raise PlotError('--compare: no run could be compared with '
                      f'{args.compare}:\n{compare_table(comparison)}')
  run_methods = {run['method'] for run in runs}
  baselines = []
  compare_files = [args.compare] if args.compare and args.compare not in (
      args.baselines or []) else []
  for filename in (args.baselines or []) + compare_files:
    for curve in load_scores(filename):
      if curve['method'] in run_methods:
        # Keep published curves apart from a run of the same method name.
        curve['method'] += f' ({pathlib.Path(filename).stem})'
      baselines.append(curve)
  baselines = [c for c in baselines if selected(c['task'], args.tasks)
               and selected(c['method'], args.methods)]
  tasks = {run['task'] for run in runs} or {c['task'] for c in baselines}
  if runs and args.baselines and not any(c['task'] in tasks for c in baselines):
    warn('--baselines hold none of the plotted tasks.')
  baselines = [c for c in baselines if c['task'] in tasks]

  curves = []
  for curve in runs + baselines:
    xs, ys = curve['xs'], curve['ys']
    if args.xlim:
      keep = (xs >= args.xlim[0]) & (xs <= args.xlim[1])
      xs, ys = xs[keep], ys[keep]
    if xs.size:
      xs, ys = bin_curve(xs, ys, args.bins)
      curves.append({**curve, 'xs': xs, 'ys': ys})
  if not curves:
    raise PlotError(
        'No points left to plot (check --tasks, --methods, --xlim).')
  curves.sort(key=lambda c: (c['task'], c['method'], seed_order(c['seed'])))
  tasks = sorted({c['task'] for c in curves})
  methods = list(dict.fromkeys(
      sorted({c['method'] for c in runs})
      + sorted({c['method'] for c in baselines})))
  methods = [m for m in methods if any(c['method'] == m for c in curves)]

  stats = None
  if args.stats:
    stats, missing = normalised_scores(curves, reference)
    if not stats:
      raise PlotError(
          f'--stats: none of the plotted tasks has random and human scores in '
          f'{args.stats_baselines}.')
    if missing:
      warn(f'--stats leaves out tasks without reference scores: '
           f'{", ".join(missing)}')

  try:
    args.outdir.mkdir(parents=True, exist_ok=True)
    filenames = plot(curves, tasks, methods, args, stats)
    filenames.append(args.outdir / f'{args.name}.json')
    write_json(filenames[-1], [
        {k: (c[k].tolist() if k in ('xs', 'ys') else c[k]) for k in CURVE_KEYS}
        for c in curves])
    if stats:
      filenames.append(args.outdir / f'{args.name}_stats.json')
      write_json(filenames[-1], stats)
    if comparison:
      filenames.append(args.outdir / f'{args.name}_compare.json')
      write_json(filenames[-1], {**comparison, 'compare': str(args.compare)})
  except OSError as error:
    raise PlotError(f'Cannot write to --outdir {args.outdir}: '
                    f'{error.strerror}.')
  if stats:
    print(stats_table(stats))
  if comparison:
    print(compare_table(comparison))
  print(f'{len(curves)} curves, {len(tasks)} tasks, {len(methods)} methods: '
        + ', '.join(str(f) for f in filenames))


def seed_order(seed):
  return (0, int(seed), '') if seed.isdigit() else (1, 0, seed)


def write_json(filename, value):
  with open(filename, 'w') as f:
    json.dump(value, f)


def parse_args(argv):
  parser = argparse.ArgumentParser(
      description='Plot learning curves of runs and published score files; '
                  "with --crafter_score, Crafter's score of runs.")
  parser.add_argument(
      '--indir', nargs='+', type=pathlib.Path,
      help='directories searched for <task>/<method>/<seed>/metrics.jsonl, '
           'or score files (.json) of runs')
  parser.add_argument('--outdir', type=pathlib.Path,
                      help='where the outputs go (required, except with '
                           '--crafter_score)')
  parser.add_argument('--name', default='curves',
                      help='file stem of the outputs (default: curves)')
  parser.add_argument('--xaxis', default='step',
                      help='metric on the x axis (default: step, env frames)')
  parser.add_argument('--yaxis', type=regex, default='eval_return',
                      help='metric on the y axis, a regex '
                           '(default: eval_return)')
  parser.add_argument('--bins', type=parse_bins, default=None,
                      help='bin width on the x axis, e.g. 1e6; 0 or none: '
                           'no binning')
  parser.add_argument('--xlim', nargs=2, type=float, metavar=('LOW', 'HIGH'))
  parser.add_argument('--ylim', nargs=2, type=float, metavar=('LOW', 'HIGH'))
  parser.add_argument('--tasks', nargs='+', type=regex, metavar='REGEX',
                      help='keep tasks fully matching any of these')
  parser.add_argument('--methods', nargs='+', type=regex, metavar='REGEX',
                      help='keep methods fully matching any of these')
  parser.add_argument(
      '--agg', type=check_agg, default='std1',
      help='seeds as: std1 (mean ± std), per0 / per25 (median and min-max / '
           'quartile band), none (every seed); default std1')
  parser.add_argument('--cols', type=int, default=4, help='panels per row')
  parser.add_argument('--size', nargs=2, type=float, default=(4.0, 3.0),
                      metavar=('WIDTH', 'HEIGHT'),
                      help='inches per panel (default: 4 3)')
  parser.add_argument(
      '--baselines', nargs='+', metavar='FILE',
      help='score files ({task, method, seed, xs, ys} lists) drawn beside '
           'the runs')
  parser.add_argument(
      '--compare', type=pathlib.Path, metavar='FILE',
      help='a published score file: print and write (<name>_compare.json) '
           'where the runs stand among its seeds (below, within or above '
           'their range) at the largest frame count all seeds reached and '
           'earlier bin edges; the file is drawn beside the runs')
  parser.add_argument(
      '--compare_at', nargs='+', type=float, metavar='FRAMES',
      help='frame counts for --compare (default: bin edges up to the end)')
  parser.add_argument(
      '--stats', action='store_true',
      help='add a panel, table and JSON of normalised final scores per method')
  parser.add_argument(
      '--stats_baselines', type=pathlib.Path,
      default=ROOT / 'scores' / 'baselines.json',
      help='random and human scores per task (default: scores/baselines.json)')
  parser.add_argument(
      '--crafter_score', nargs='+', type=pathlib.Path, metavar='LOGDIR',
      help="Crafter's success rates of its 22 achievements and its score "
           'per seed and over seeds, beside the published scores '
           '(scores/crafter-baselines.json), for every run (a directory '
           'with train_episodes/) in or under the logdirs; with --outdir '
           'also <name>_crafter.json')
  parser.add_argument(
      '--crafter_budget', type=parse_budget, default=1e6, metavar='STEPS',
      help='env steps of episodes that --crafter_score counts (default: 1e6, '
           "Crafter's budget)")
  parser.add_argument(
      '--json', action='store_true',
      help='with --crafter_score: print the result as one JSON line instead '
           'of the table')
  args = parser.parse_args(argv)
  if args.crafter_score:
    others = [flag for flag, value in (
        ('--indir', args.indir), ('--baselines', args.baselines),
        ('--compare', args.compare), ('--stats', args.stats)) if value]
    if others:
      parser.error(f'--crafter_score is not combined with {others[0]}')
  elif args.outdir is None:
    parser.error('the following arguments are required: --outdir')
  elif args.json:
    parser.error('--json goes with --crafter_score')
  if args.cols < 1:
    parser.error(f'--cols must be at least 1, not {args.cols}')
  if args.xlim and args.xlim[0] >= args.xlim[1]:
    parser.error('--xlim LOW must be below HIGH')
  return args


def regex(text):
  try:
    re.compile(text)
  except re.error as error:
    raise argparse.ArgumentTypeError(f"'{text}' is not a regex: {error}")
  return text


def parse_bins(text):
  if text.lower() in ('none', '0', ''):
    return None
  try:
    bins = float(text)
  except ValueError:
    bins = -1
  if not (bins >= 0 and math.isfinite(bins)):
    raise argparse.ArgumentTypeError(
        f"'{text}' is not a bin width (a positive number, 0 or none)")
  return bins or None


def parse_budget(text):
  try:
    budget = float(text)
  except ValueError:
    budget = -1
  if not (budget > 0 and math.isfinite(budget)):
    raise argparse.ArgumentTypeError(
        f"'{text}' is not a budget (a positive number of env steps)")
  return budget


def check_agg(text):
  try:
    parse_agg(text)
  except ValueError:
    raise argparse.ArgumentTypeError(
        f"'{text}' is not one of stdK (e.g. std1), perK with K < 50 "
        '(e.g. per0, per25), none')
  return text


if __name__ == '__main__':
  main()
