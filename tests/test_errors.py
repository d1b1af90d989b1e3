"""The one mapping from errors to exit statuses (common/errors.py) that
train.py, eval.py, plot.py and the config parser use."""

import pathlib
import subprocess
import sys

import pytest

from common import choices
from common import config as config_lib
from common import envs
from common import errors
from common import logger
from common import plot
from common import rundir
from common import utils


@pytest.mark.parametrize('error', [
    config_lib.ConfigError('a'), choices.BadChoice('a'),
    envs.UnknownTask('a'), envs.MissingPackage('a'),
    envs.UnsupportedSpace('a'), logger.MissingTracker('a'),
    plot.PlotError('a'), rundir.LogdirInUse('a')])
def test_every_usage_error_exits_2_with_one_line(error, capsys):
  with pytest.raises(SystemExit) as exit_:
    with errors.exit_on_errors():
      raise error
  assert exit_.value.code == 2
  assert capsys.readouterr().err == 'error: a\n'


def test_a_message_of_several_lines_is_printed_on_one(capsys):
  # A numpy repr in a message spans lines: the user still gets one.
  with pytest.raises(SystemExit):
    with errors.exit_on_errors(prefix='plot.py: error'):
      raise envs.UnsupportedSpace('space [[2 3]\n [2 2]] is not supported')
  assert capsys.readouterr().err == (
      'plot.py: error: space [[2 3] [2 2]] is not supported\n')


def test_a_run_that_ended_saved_exits_1_with_its_hint(capsys):
  with pytest.raises(SystemExit) as exit_:
    with errors.exit_on_errors():
      raise utils.DiskFull(28, 'no space for /x (3 bytes, 0 free)')
  assert exit_.value.code == 1
  err = capsys.readouterr().err
  assert err.startswith('error: no space for /x (3 bytes, 0 free). ')
  assert 'run the same command to resume' in err and err.count('\n') == 1


def test_any_other_error_keeps_its_traceback():
  with pytest.raises(KeyError):
    with errors.exit_on_errors():
      raise KeyError('a bug')


def test_plot_and_the_config_parser_exit_2_through_it(tmp_path):
  for command in (
      ['common/plot.py', '--indir', str(tmp_path / 'none'), '--outdir',
       str(tmp_path / 'out')],
      ['dreamerv2/train.py', '--logdir', str(tmp_path), '--nosuchkey', '1']):
    result = subprocess.run(
        [sys.executable, *command], capture_output=True, text=True,
        timeout=120, cwd=pathlib.Path(__file__).resolve().parent.parent)
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert 'error: ' in result.stderr
