"""Train DreamerV2 from the command line.

  python3 dreamerv2/train.py --logdir ~/logdir/atari_pong/dreamerv2/1 \\
      --configs defaults atari --task atari_pong

The logdir holds everything of a run (common/rundir.py): config.yaml,
metrics.jsonl, TensorBoard events, train_episodes/ and eval_episodes/ (one
.npz per finished episode) and the checkpoint variables.pkl. Running the same
command again resumes there: weights, optimizer state, step counter and
replay. Ctrl-C stops after the current step, saves the checkpoint and exits 0.

This script checks the command line and the task, then runs the training
loop of dreamerv2/loop.py on the task's envs.
"""

import functools
import os
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
# Before TensorFlow loads: hide its C++ info lines and the CUDA probe error.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

from common import config as config_lib  # noqa: E402
from common import envs as envs_lib  # noqa: E402
from common import errors  # noqa: E402
from common import rundir  # noqa: E402
from dreamerv2 import build  # noqa: E402
from dreamerv2 import loop  # noqa: E402


def main(argv=None):
  config = config_lib.parse(argv)  # Exits 2 on bad flags.
  with errors.exit_on_errors(interrupted=
      'Aborted by a second Ctrl-C: the checkpoint was not saved.'):
    build.check_config(config)
    with build.mujoco_rendering_off():
      envs_lib.check_task(config.task, config.gym_kwargs)
    rundir.prepare(config.logdir)
    where, reason = envs_lib.where_to_run(config.task, config.envs_parallel)
    if reason:
      print(reason)
      config = config.update(envs_parallel=where)
    print(f'Task {config.task} · {config.envs} train env(s), '
          f'envs_parallel {config.envs_parallel}')
    loop.run(config, functools.partial(build.make_task_envs, config))


if __name__ == '__main__':
  main()
