"""The values of the choice keys whose code needs TensorFlow, kept here once
(this module imports nothing): the agent reads them, and train.py checks a
config against them before TensorFlow loads. Env choices live in envs.py,
which loads no TensorFlow either."""

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
