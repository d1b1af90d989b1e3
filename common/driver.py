"""Run a policy in a list of envs and hand the data to callbacks.

The driver knows neither the agent nor the replay: train.py connects them
with `on_step`, `on_reset` and `on_episode`. A transition is the observation
dict plus 'action', the action that led to it (zeros after a reset):

  reset:  obs_0 + action=0    -> on_reset
  step:   obs_t + action_t-1  -> on_step, and on_episode after is_last
  episode: every transition of the episode stacked over time, [T + 1, ...]
"""

import numpy as np

from common import envs as envs_lib


class Driver:

  def __init__(self, envs):
    self._envs = list(envs)
    self._act_spaces = [env.act_space for env in self._envs]
    self._on_steps = []
    self._on_resets = []
    self._on_episodes = []
    self.reset()

  def on_step(self, callback):
    """callback(transition, worker=i) after every env step."""
    self._on_steps.append(callback)

  def on_reset(self, callback):
    """callback(transition, worker=i) after every env reset."""
    self._on_resets.append(callback)

  def on_episode(self, callback):
    """callback(episode, worker=i) when an episode ends (is_last)."""
    self._on_episodes.append(callback)

  def reset(self):
    """Forget episodes in progress and the policy state; envs reset next."""
    self._obs = [None] * len(self._envs)
    self._episodes = [None] * len(self._envs)
    self._state = None

  def __call__(self, policy, steps=0, episodes=0):
    """Run until `steps` env steps (summed over envs) or `episodes` episodes.

    policy(obs, state) -> (outputs, state): obs holds every key stacked over
    envs [N, ...]; outputs['action'] is [N, ...]; state is passed back as is
    (None at the first call). Episodes in progress continue across calls.
    With N envs, up to N - 1 steps more than `steps` may run.
    """
    step, episode = 0, 0
    while step < steps or episode < episodes:
      self._reset_finished()
      obs = {
          key: np.stack([ob[key] for ob in self._obs])
          for key in self._obs[0]}
      outputs, self._state = policy(obs, self._state)
      outputs = {key: np.asarray(outputs[key]) for key in self._act_spaces[0]}
      actions = [
          {key: _convert(value[i]) for key, value in outputs.items()}
          for i in range(len(self._envs))]
      promises = [
          _start(env, 'step', action)
          for env, action in zip(self._envs, actions)]
      for i, (promise, action) in enumerate(zip(promises, actions)):
        ob = promise()
        self._obs[i] = ob
        transition = _transition(ob, action)
        for callback in self._on_steps:
          callback(transition, worker=i)
        self._episodes[i].append(transition)
        step += 1
        if ob['is_last']:
          stacked = {
              key: np.stack([t[key] for t in self._episodes[i]])
              for key in self._episodes[i][0]}
          for callback in self._on_episodes:
            callback(stacked, worker=i)
          episode += 1

  def _reset_finished(self):
    """Reset every env without an episode in progress, all at once."""
    promises = {
        i: _start(env, 'reset')
        for i, (env, ob) in enumerate(zip(self._envs, self._obs))
        if ob is None or ob['is_last']}
    for i, promise in promises.items():
      ob = promise()
      self._obs[i] = ob
      action = {
          key: np.zeros(space.shape, np.float32)
          for key, space in self._act_spaces[i].items()}
      transition = _transition(ob, action)
      for callback in self._on_resets:
        callback(transition, worker=i)
      self._episodes[i] = [transition]


def _start(env, method, *args):
  """Call env.method(*args); return a callable that gives the result."""
  if isinstance(env, envs_lib.Parallel):
    return getattr(env, method)(*args, blocking=False)
  result = getattr(env, method)(*args)
  return lambda: result


def _transition(ob, action):
  return {key: _convert(value) for key, value in {**ob, **action}.items()}


def _convert(value):
  """A numpy value with a storage dtype: float32 for floats, int32 for ints."""
  value = np.asarray(value)
  floating = value.dtype.kind == 'f' or value.dtype.name == 'bfloat16'
  if floating and value.dtype != np.float32:
    return value.astype(np.float32)
  if value.dtype == np.int64:
    return value.astype(np.int32)
  return value
