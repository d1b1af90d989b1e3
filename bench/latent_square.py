"""How long does the world model's latent take to carry the image? Prints
ONE JSON line.

A synthetic task that only the image can solve: dark 64x64 frames with one
bright 8x8 square per sequence, at a random position that stays put; the
actions are random and unrelated. The world model (the `atari` config with a
smaller network: deter and hidden 128, conv depth 16, batch 16 x 10) trains
on fresh batches, and every `--eval_every` updates the posterior's
reconstruction of 32 held-out sequences is scored (per-pixel MSE, pixels in
[0, 1]) against the floor of predicting the mean frame. Until the latent
carries the square the reconstruction stays at the floor: that phase is what
this measures (`first_below`: the first evaluation under `--below` x floor).

  python3 bench/latent_square.py          # atari lr 2e-4, 500 updates
  python3 bench/latent_square.py --config --model_opt.lr 6e-4
  python3 bench/latent_square.py --quick  # < 1 min, CI
"""

import argparse
import json
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import probes  # noqa: E402


def main():
  parser = argparse.ArgumentParser(
      description='Latent wake-up benchmark (one JSON line).')
  parser.add_argument('--updates', type=int, default=500)
  parser.add_argument('--eval_every', type=int, default=50)
  parser.add_argument('--precision', type=int, default=16, choices=(16, 32))
  parser.add_argument('--below', type=float, default=0.6,
                      help='first_below: first evaluation with error < this x '
                           'floor')
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--quick', action='store_true')
  parser.add_argument('--config', nargs=argparse.REMAINDER, default=[])
  args = parser.parse_args()
  if args.quick:
    args.updates, args.eval_every = 4, 2
  for name in ('updates', 'eval_every'):
    if getattr(args, name) < 1:
      parser.error(f'--{name} must be at least 1, got {getattr(args, name)}')
  print(json.dumps(probes.run(
      args.updates, args.eval_every, args.precision, args.config, args.below,
      args.seed)))


if __name__ == '__main__':
  main()
