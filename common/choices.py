"""The values of the choice keys, kept here once (this module imports only
common/errors.py): the code that uses a key reads them, and a run checks its
config against them before TensorFlow loads (`check_all`). `check` is the one
check and the one wording of "not one of" for every choice."""

from common import errors


class BadChoice(errors.UsageError):
  """A value that is not one of a key's choices."""


def check(key, value, accepted):
  """Raises BadChoice naming the key, the value and what is accepted."""
  if value not in accepted:
    names = ', '.join(str(choice) for choice in accepted)
    raise BadChoice(f'{key} {value!r} is not one of: {names}')
  return value


# expl_behavior -> the behaviour in dreamerv2/expl.py (None: the task actor).
EXPL_BEHAVIORS = {
    'greedy': None, 'random': 'random', 'plan2explore': 'plan2explore',
    'model_loss': 'model_loss',
    # Spellings of the original release.
    'Random': 'random', 'Plan2Explore': 'plan2explore',
    'ModelLoss': 'model_loss',
}
# actor_grad; 'auto' is reinforce for discrete and dynamics for continuous
# actions.
ACTOR_GRADS = ('auto', 'reinforce', 'dynamics', 'both')
# precision: 16 is bfloat16 on a CPU and float16 with loss scaling on a GPU.
PRECISIONS = (16, 32)
# distribute.strategy: where the update runs (common/tfutils.py, `strategy`).
DISTRIBUTE = ('none', 'mirrored', 'multi_worker')
# envs_parallel: where an env runs (common/envs.py).
PARALLEL = ('none', 'thread', 'process')
# warm_start.only: which weights of warm_start.checkpoint a new run loads.
WARM_START = ('all', 'world_model')
# The norm of a layer stack (`.*\.norm`).
NORMS = ('none', 'layer')
# The output distribution of a head (`*_head.dist`, `actor.dist`, ...).
DISTS = ('mse', 'binary', 'onehot', 'normal', 'tanh_normal', 'trunc_normal')
# Agent.policy's mode: sample, the actor's mode, or the exploration actor.
POLICY_MODES = ('train', 'eval', 'explore')
# disag_target: what Plan2Explore's ensemble predicts.
DISAG_TARGETS = ('embed', 'stoch', 'deter', 'feat')
# actor.dist: 'auto' is onehot for discrete and trunc_normal for continuous
# action parts; a continuous part needs one of CONTINUOUS_DISTS.
ACTOR_DISTS = ('auto',) + DISTS
CONTINUOUS_DISTS = ('trunc_normal', 'tanh_normal', 'normal')
# clip_rewards: the squashing of the reward target (dreamerv2/agent.py).
CLIP_REWARDS = ('identity', 'sign', 'tanh')
# rssm.std_act: the positive map of the continuous latents' std.
STD_ACTS = ('softplus', 'sigmoid', 'sigmoid2')
# `*_opt.opt`: the optimizer (common/tfutils.py).
OPTIMIZERS = ('adam',)
# `*.act`: besides these, the name of any function of tf.nn or tf.
ACTIVATIONS = ('none', 'mish')


def check_all(flat):
  """Checks every choice key of a flat config ({dotted key: value}),
  the nested ones (`*.norm`, `*.dist`, `*_opt.opt`) by their last part."""
  keys = {
      'envs_parallel': PARALLEL, 'expl_behavior': tuple(EXPL_BEHAVIORS),
      'actor_grad': ACTOR_GRADS, 'precision': PRECISIONS,
      'warm_start.only': WARM_START, 'distribute.strategy': DISTRIBUTE,
      'clip_rewards': CLIP_REWARDS, 'rssm.std_act': STD_ACTS,
      'disag_target': DISAG_TARGETS, 'actor.dist': ACTOR_DISTS}
  ends = {'.norm': NORMS, '.dist': DISTS, '_opt.opt': OPTIMIZERS}
  for key, value in flat.items():
    accepted = keys.get(key) or next(
        (choices for end, choices in ends.items() if key.endswith(end)), None)
    if accepted is not None:
      check(key, value, accepted)
