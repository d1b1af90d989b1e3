"""The command line: named configs, typed flags, and errors before any work."""

import os
import pathlib
import pickle
import subprocess
import sys

import pytest

from common import config as configlib

ROOT = pathlib.Path(__file__).resolve().parent.parent
parse = configlib.parse


def parse_error(argv, capsys):
  """Runs a bad command line; returns the one error line it printed."""
  with pytest.raises(SystemExit) as exit_info:
    parse(argv)
  assert exit_info.value.code == 2
  err = capsys.readouterr().err
  assert err.count('\n') == 1, err
  assert err.startswith('error: ')
  return err.strip()


# Named configs and their order.

def test_later_config_wins_then_flags_win():
  config = parse(['--configs', 'defaults', 'atari', 'debug'])
  assert config.prefill == 100           # debug over atari's 50000
  assert config.dataset.batch == 10      # debug over atari's 50
  assert config.eval_every == 300
  assert config.rssm.deter == 600        # atari, untouched by debug
  assert config.jit is False
  config = parse(['--configs', 'defaults', 'atari', 'debug', '--prefill', '7'])
  assert config.prefill == 7


def test_flags_win_wherever_configs_is_written():
  config = parse(['--prefill', '7', '--configs', 'defaults', 'atari'])
  assert config.prefill == 7
  assert config.action_repeat == 4


def test_defaults_is_implied_first():
  assert parse(['--configs', 'atari']) == parse(
      ['--configs', 'defaults', 'atari'])
  assert parse([]) == configlib.Config(configlib.load_configs()['defaults'])
  assert parse([]).rssm.deter == 1024


def test_atari_block_is_the_published_scores_release():
  config = parse(['--configs', 'defaults', 'atari'])
  assert config.task == 'atari_pong'
  assert config.dataset.batch == 50 and config.dataset.length == 50
  # The published-scores release wrote these in env frames and divided them
  # by the action repeat; this project's keys count agent steps.
  published_frames = {'steps': 2e8, 'prefill': 200000, 'log_every': 1e5,
                      'eval_every': 1e5, 'time_limit': 108000}
  for key, frames in published_frames.items():
    assert config[key] == frames // config.action_repeat, key
  assert config.eval_eps == 1
  assert config.rssm.hidden == 600 and config.rssm.deter == 600
  assert config.model_opt.lr == 2e-4
  assert config.actor_opt.lr == 4e-5
  assert config.critic_opt.lr == 1e-4
  assert config.loss_scales.kl == 0.1
  assert config.loss_scales.discount == 5.0
  assert config.discount == 0.999
  assert config.time_limit == 27000
  assert config.action_repeat == 4
  assert config.train_every == 16
  assert config.steps == 50_000_000 and isinstance(config.steps, int)
  assert config.encoder.cnn_keys == 'image' and config.encoder.mlp_keys == '$^'


def test_dmc_is_the_mid_2021_block_in_agent_steps():
  # 0216d33 wrote steps 1e8, time_limit 1000, prefill 5000, log_every and
  # eval_every 1e4 in frames and divided them by its action repeat 2; its
  # batch was 50.
  dmc = parse(['--configs', 'dmc'])
  vision = parse(['--configs', 'dmc_vision'])
  assert (dmc.steps, dmc.time_limit, dmc.prefill, dmc.log_every,
          dmc.eval_every) == (50_000_000, 500, 2500, 5000, 5000)
  assert dmc.dataset.batch == 50 and dmc.dataset.length == 50
  assert dmc.action_repeat == 2
  changed = {key for key in dmc.flat if dmc.flat[key] != vision.flat[key]}
  assert changed == {'steps', 'time_limit', 'prefill', 'log_every',
                     'eval_every', 'dataset.batch'}


def test_nested_update_only_touches_given_subkeys():
  config = parse(['--configs', 'atari'])
  assert dict(config.rssm) == {
      'ensemble': 1, 'hidden': 600, 'deter': 600, 'stoch': 32, 'discrete': 32,
      'act': 'elu', 'norm': 'none', 'std_act': 'sigmoid2', 'min_std': 0.1}
  assert config.encoder.cnn_depth == 48
  assert config.encoder.cnn_kernels == (4, 4, 4, 4)
  updated = config.update({'rssm': {'stoch': 16}})
  assert updated.rssm.stoch == 16
  assert configlib.diff(config, updated) == [('rssm.stoch', 32, 16)]


def test_regex_keys_set_every_matching_dotted_path():
  config = parse(['--configs', 'crafter'])
  norms = {key: value for key, value in config.flat.items()
           if key.endswith('.norm')}
  assert set(norms) == {
      'rssm.norm', 'encoder.norm', 'decoder.norm', 'reward_head.norm',
      'discount_head.norm', 'actor.norm', 'critic.norm', 'expl_head.norm'}
  assert set(norms.values()) == {'layer'}
  assert config.reward_norm.momentum == 1.0  # `reward_norm` is not `*.norm`
  assert parse([]).rssm.norm == 'none'
  updated = config.update({r'.*\.wd$': 0})
  assert [key for key, _, new in configlib.diff(config, updated)] == [
      'model_opt.wd', 'actor_opt.wd', 'critic_opt.wd', 'expl_opt.wd']
  assert updated.model_opt.wd == 0.0 and isinstance(updated.model_opt.wd, float)


def test_regex_flag():
  config = parse([r'--.*_opt\.lr', '1e-3'])
  assert config.model_opt.lr == config.actor_opt.lr == 1e-3
  assert config.expl_opt.lr == 1e-3


# Values are parsed to the type of the default.

def test_int_flags_accept_integral_scientific_notation():
  assert parse(['--steps', '1e6']).steps == 1000000
  assert isinstance(parse(['--steps', '1e6']).steps, int)
  assert parse(['--steps', '2.5e5']).steps == 250000
  assert parse(['--replay.capacity', '1000']).replay.capacity == 1000
  assert parse(['--dmc_camera', '-1']).dmc_camera == -1


def test_defaults_written_in_e_notation_are_ints():
  config = parse([])
  assert config.steps == 100_000_000 and isinstance(config.steps, int)
  assert config.replay.capacity == 2_000_000
  assert isinstance(config.replay.capacity, int)
  assert config.model_opt.lr == 1e-4 and isinstance(config.model_opt.lr, float)
  assert config.reward_norm.eps == 1e-8


def test_float_flags_accept_ints_and_scientific_notation():
  config = parse(['--model_opt.lr', '3e-4', '--discount', '1'])
  assert config.model_opt.lr == 3e-4
  assert config.discount == 1.0 and isinstance(config.discount, float)


@pytest.mark.parametrize('text, value', [
    ('True', True), ('False', False), ('true', True), ('false', False),
    ('1', True), ('0', False)])
def test_bool_flags(text, value):
  assert parse(['--jit', text]).jit is value


def test_list_flags():
  assert parse(['--render_size', '32,48']).render_size == (32, 48)
  assert parse(['--grad_heads', 'decoder,reward']).grad_heads == (
      'decoder', 'reward')
  assert parse(['--grad_heads', 'decoder', 'reward']).grad_heads == (
      'decoder', 'reward')
  assert parse(['--log_keys_video', '']).log_keys_video == ()


def test_equals_form_and_strings_as_is():
  config = parse(['--task=atari_breakout', '--log_keys_max', '^log_.*$'])
  assert config.task == 'atari_breakout'
  assert config.log_keys_max == '^log_.*$'
  assert parse(['--logdir=/tmp/a=b']).logdir == '/tmp/a=b'
  assert parse([]).update({'actor_ent': 1e-3}).actor_ent == '0.001'


# Errors: one line naming the problem, exit status 2.

@pytest.mark.parametrize('argv, message', [
    (['--nosuchkey', '1'], 'error: unknown flag --nosuchkey'),
    (['--deter', '600'], 'close matches: rssm.deter'),
    (['--steps', 'abc'], "error: --steps expects an int, got 'abc'"),
    (['--steps', '1.5'], "error: --steps expects an int, got '1.5'"),
    (['--model_opt.lr', 'fast'], '--model_opt.lr expects a float'),
    (['--jit', 'maybe'], '--jit expects a bool'),
    (['--render_size', '64,x'],
     '--render_size expects a comma separated list of ints'),
    (['--steps'], '--steps expects a value'),
    (['--steps', '--prefill', '5'], '--steps expects a value'),
    (['--steps', '1', '2'], '--steps expects one value'),
    (['--steps', '1', '--steps', '2'], '--steps given twice'),
    (['--rssm', '600'], '--rssm is a group of keys'),
    (['--configs', 'atarii'],
     "error: unknown config 'atarii' (choices: defaults, atari,"),
    (['--configs'], '--configs expects config names'),
    (['--configs', 'atari', 'defaults'], "'defaults' must come first"),
    (['atari_pong'], "unexpected argument 'atari_pong'"),
])
def test_errors_name_the_problem_and_exit_2(argv, message, capsys):
  assert message in parse_error(argv, capsys)


def test_error_exits_before_printing_anything_else(capsys):
  parse_error(['--configs', 'atari', '--steps', 'x'], capsys)
  assert capsys.readouterr().out == ''


def test_help_lists_every_key_with_its_value(capsys):
  with pytest.raises(SystemExit) as exit_info:
    parse(['--configs', 'defaults', 'atari', '--help'])
  assert exit_info.value.code == 0
  lines = capsys.readouterr().out.splitlines()
  assert lines[0].startswith('usage: ')
  values = dict(line.split() for line in lines if line.startswith('  --'))
  assert len(values) == len(parse([]).flat)
  assert values['--rssm.deter'] == '600'
  assert values['--prefill'] == '50000'
  assert values['--render_size'] == '64,64'
  assert values['--logdir'] == "''"
  with pytest.raises(SystemExit):
    parse(['-h'])
  assert "  --rssm.deter" in capsys.readouterr().out


def test_help_piped_into_head_exits_quietly():
  # head closes the pipe after one line; printing the rest must not fail.
  command = f'"{sys.executable}" dreamerv2/train.py --help | head -1'
  result = subprocess.run(
      command, shell=True, cwd=ROOT, capture_output=True, text=True, timeout=60)
  assert result.stdout.startswith('usage: ')
  assert 'Traceback' not in result.stderr, result.stderr


# The Config object.

def test_config_access_and_immutability():
  config = parse([])
  assert config.rssm.deter == config['rssm']['deter'] == 1024
  assert config.get('nosuchkey', 3) == 3
  assert 'rssm' in config and len(config) == len(list(config))
  assert dict(config)['task'] == 'dmc_walker_walk'
  with pytest.raises(AttributeError):
    config.steps = 5
  with pytest.raises(TypeError):
    config['steps'] = 5
  with pytest.raises(AttributeError):
    config.nosuchkey
  updated = config.update({'actor.dist': 'onehot'}, steps=10)
  assert updated.actor.dist == 'onehot' and updated.steps == 10
  assert config.actor.dist == 'auto' and config.steps == 100_000_000
  assert pickle.loads(pickle.dumps(updated)) == updated


def test_update_rejects_unknown_keys_and_wrong_types():
  config = parse([])
  with pytest.raises(KeyError, match='rssm.detr'):
    config.update({'rssm.detr': 5})
  with pytest.raises(ValueError, match='steps expects an int'):
    config.update({'steps': 1.5})
  with pytest.raises(ValueError, match='jit expects a bool'):
    config.update({'jit': 'yes'})


def test_save_and_load_round_trip(tmp_path):
  config = parse(['--configs', 'crafter', '--steps', '1e6'])
  path = tmp_path / 'config.yaml'
  config.save(path)
  assert os.listdir(tmp_path) == ['config.yaml']  # the .tmp file was renamed
  loaded = configlib.Config.load(path)
  assert loaded == config
  assert loaded.steps == 1000000 and isinstance(loaded.steps, int)
  assert isinstance(loaded.model_opt.lr, float)
  assert loaded.render_size == (64, 64)
  assert loaded.log_keys_sum == '^log_reward$'
  assert list(loaded.flat) == list(config.flat)  # key order kept
  assert configlib.Config.load(str(path)) == config


def test_diff_reports_changed_keys_with_both_values():
  old = parse(['--configs', 'atari'])
  new = parse(['--configs', 'atari', '--steps', '1e6', '--dataset.batch', '16'])
  assert configlib.diff(old, new) == [
      ('steps', 50_000_000, 1_000_000), ('dataset.batch', 50, 16)]
  assert configlib.diff(old, old) == []
  assert configlib.diff({'a': 1}, {'b': 2}) == [('a', 1, None), ('b', None, 2)]


def test_parsing_never_imports_tensorflow():
  code = (
      "import sys; sys.path.insert(0, '.'); from common import config; "
      "config.parse(['--configs', 'defaults', 'atari', '--steps', '1e6']); "
      "print('tensorflow' in sys.modules)")
  result = subprocess.run(
      [sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True,
      timeout=60)
  assert result.returncode == 0, result.stderr
  assert result.stdout.strip() == 'False'


def test_error_exit_from_a_subprocess():
  code = "from common import config; config.parse(['--steps', 'abc'])"
  result = subprocess.run(
      [sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True,
      timeout=60)
  assert result.returncode == 2
  assert result.stderr == "error: --steps expects an int, got 'abc'\n"
