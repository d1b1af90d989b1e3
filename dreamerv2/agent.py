"""What DreamerV2 learns: the world model, the actor-critic in imagination, and
the agent that acts with them. The agent does not know where data comes from:
`train(data)` takes a batch of sequences, `policy(obs, state)` one step."""

import tensorflow as tf

from common import choices
from common import nets
from common import tfutils

# The policy computes in float32 whatever config.precision: one step for a few
# envs is bound by reading the weights, and a bfloat16 cast of them per call
# only adds to that (bench/README.md, "The policy step").
POLICY_DTYPE = tf.float32


class Agent(tf.Module):

  def __init__(self, config, obs_space, act_space, dtype=None):
    super().__init__(name='agent')
    # config.precision holds for this agent only: it is built and called in
    # its compute dtype, whatever the process-wide default (nets.compute_in).
    # `dtype` overrides it (tests: float16 as on a GPU).
    self.dtype = dtype or nets.dtype_for(config.precision)
    with nets.compute_in(self.dtype):
      self._build(config, obs_space, act_space)

  def _build(self, config, obs_space, act_space):
    from dreamerv2 import expl
    self.config = config
    self.act_space = act_space['action']
    self.discrete = bool(getattr(self.act_space, 'discrete', False))
    # The parts of an action of several (envs.ActionParts), else None; the
    # behaviours take them in place of `discrete`.
    self.parts = action_parts(getattr(self.act_space, 'parts', None))
    kinds = self.parts or self.discrete
    self.tfstep = tf.Variable(0, dtype=tf.int64, trainable=False)
    self.wm = WorldModel(
        config, obs_space, self.act_space.shape[0], self.tfstep)
    self._task_behavior = ActorCritic(
        config, self.act_space.shape[0], kinds, self.wm.feat_size,
        self.tfstep)
    behavior = choices.EXPL_BEHAVIORS[config.expl_behavior]
    if behavior is None:
      self._expl_behavior = None  # The task actor explores.
    else:
      self._expl_behavior = {
          'random': expl.Random, 'plan2explore': expl.Plan2Explore,
          'model_loss': expl.ModelLoss,
      }[behavior](config, self.act_space.shape[0], kinds, self.wm,
                  self.tfstep, self._task_reward)
    self._obs_keys = sorted(
        set(self.wm.encoder.cnn_keys + self.wm.encoder.mlp_keys))
    # The update uncompiled: dreamerv2/distribute.py compiles it for data
    # parallelism itself.
    self.update = self._train
    if config.jit:
      # No autograph: the loops are over Python ranges and branches use tf.cond,
      # so there is nothing to convert, and converting costs tracing time.
      jit = dict(jit_compile=bool(config.xla), autograph=False)
      self._policy = tf.function(self._policy, **jit)
      self._train = tf.function(self._train, **jit)
      self._report = tf.function(self._report, **jit)

  def initial_state(self, batch):
    with nets.compute_in(POLICY_DTYPE):
      latent = self.wm.rssm.initial(batch)
      action = tf.zeros([batch, self.act_space.shape[0]], POLICY_DTYPE)
    return latent, action

  def policy(self, obs, state=None, mode='train'):
    """obs: dict of arrays [N, ...] with the encoder's keys and `is_first`;
    mode: 'train' (sample), 'eval' (actor mode), 'explore' (exploration actor).
    Returns ({'action': [N, A]}, state)."""
    choices.check('policy mode', mode, choices.POLICY_MODES)
    obs = {k: obs[k] for k in self._obs_keys + ['is_first']}
    if state is None:
      state = self.initial_state(len(obs['is_first']))
    with nets.compute_in(POLICY_DTYPE):
      return self._policy(obs, state, mode)

  def _policy(self, obs, state, mode):
    latent, action = state
    embed = self.wm.encoder(self.wm.preprocess(obs))
    # The posterior's mode instead of a sample in every mode but 'train'.
    sample = (mode == 'train') or not self.config.eval_state_mean
    latent, _ = self.wm.rssm.obs_step(
        latent, action, embed, obs['is_first'], sample, with_prior=False)
    feat = self.wm.rssm.get_feat(latent)
    if mode == 'eval':
      action = self._task_behavior.actor(feat).mode()
      noise = self.config.eval_noise
    elif mode == 'explore':
      action = (self._expl_behavior or self._task_behavior).actor(feat).sample()
      noise = self.config.expl_noise
    else:
      action = self._task_behavior.actor(feat).sample()
      noise = self.config.expl_noise
    action = action_noise(action, noise, self.discrete, self.parts)
    action = tf.cast(action, POLICY_DTYPE)
    return {'action': action}, (latent, action)

  def train(self, data, step=None):
    """One update of the world model, the actor-critic and (if set) the
    exploration behaviour on a batch of sequences [B, T, ...]. step: the
    agent step the schedules read."""
    with nets.compute_in(self.dtype):
      if step is not None:
        self.tfstep.assign(step)
      return self._train(data)

  def _train(self, data):
    metrics = {}
    outputs, mets = self.wm.train(data)
    metrics.update(mets)
    start = {k: tf.stop_gradient(v) for k, v in outputs['post'].items()}
    metrics.update(self._task_behavior.train(
        self.wm, start, data['is_terminal'], self._task_reward))
    if self._expl_behavior:
      mets = self._expl_behavior.train(start, outputs, data)
      metrics.update({'expl_' + k: v for k, v in mets.items()})
    return metrics

  def _task_reward(self, seq):
    """The task's reward of imagined states: the reward head's mode."""
    return self.wm.heads['reward'](seq['feat']).mode()

  def report(self, data):
    """Open-loop video: 5 context frames, then the model imagines the rest
    from the actions alone. Rows: truth / model / error. uint8 [T, H, W, C]."""
    with nets.compute_in(self.dtype):
      return self._report(data)

  def _report(self, data):
    report = {}
    for key in self.wm.heads['decoder'].cnn_keys:
      report[f'openl_{key}'] = self.wm.video_pred(data, key)
    return report


class WorldModel(tf.Module):

  def __init__(self, config, obs_space, action_size, tfstep):
    super().__init__(name='world_model')
    shapes = {k: tuple(v.shape) for k, v in obs_space.items()
              if not k.startswith('log_') and k not in
              ('reward', 'is_first', 'is_last', 'is_terminal')}
    self.config = config
    self.tfstep = tfstep
    self.encoder = nets.Encoder(shapes, **config.encoder)
    self.rssm = nets.RSSM(action_size, self.encoder.embed_size, **config.rssm)
    self.feat_size = self.rssm.feat_size
    self.heads = {}
    self.heads['decoder'] = nets.Decoder(
        shapes, self.feat_size, **config.decoder)
    self.heads['reward'] = nets.MLP(self.feat_size, [], **config.reward_head)
    if config.pred_discount:
      self.heads['discount'] = nets.MLP(
          self.feat_size, [], **config.discount_head)
    for name in config.grad_heads:
      if name not in self.heads:
        raise ValueError(
            f'grad_heads names {name!r}, which is not a head '
            f'(heads: {", ".join(self.heads)})')
    modules = [self.encoder, self.rssm, *self.heads.values()]
    variables = [v for m in modules for v in m.trainable_variables]
    self.model_opt = tfutils.Optimizer('model', variables, **config.model_opt)

  def train(self, data):
    with tf.GradientTape() as tape:
      model_loss, outputs, metrics = self.loss(data)
    metrics.update(self.model_opt(tape, model_loss))
    return outputs, metrics

  def loss(self, data):
    data = self.preprocess(data)
    embed = self.encoder(data)
    post, prior = self.rssm.observe(embed, data['action'], data['is_first'])
    kl_loss, kl_value = self.rssm.kl_loss(post, prior, **self.config.kl)
    losses = {'kl': kl_loss}
    feat = self.rssm.get_feat(post)
    for name, head in self.heads.items():
      inp = feat if name in self.config.grad_heads else tf.stop_gradient(feat)
      out = head(inp)
      for key, dist in (out if isinstance(out, dict) else {name: out}).items():
        losses[key] = -tf.reduce_mean(dist.log_prob(data[key]))
    scales = self.config.loss_scales
    model_loss = sum(scales.get(k, 1.0) * v for k, v in losses.items())
    outputs = dict(embed=embed, feat=feat, post=post, prior=prior, kl=kl_value)
    metrics = {f'{name}_loss': value for name, value in losses.items()}
    metrics['model_kl'] = tf.reduce_mean(kl_value)
    metrics['prior_ent'] = tf.reduce_mean(self.rssm.get_dist(prior).entropy())
    metrics['post_ent'] = tf.reduce_mean(self.rssm.get_dist(post).entropy())
    return model_loss, outputs, metrics

  def imagine(self, policy, start, is_terminal, horizon):
    """Rolls the prior forward `horizon` steps from every start state with
    actions from `policy` (which sees stop_gradient(feat)).

      states:   s0 -> s1 -> ... -> sH     (s0 = a posterior state from replay)
      action:   0     a1          aH      (a_t led into s_t; a_{t+1} ~ pi(s_t))
      discount: d0    d1          dH      (d0 from replay, the rest predicted)
      weight:   1     d0     ...  d0..d_{H-1}
    Returns a dict of [H+1, B*T, ...] tensors, including the policy's
    distribution at each state ('policy', for the actor loss).
    """
    flat = lambda x: tf.reshape(x, tf.concat([[-1], tf.shape(x)[2:]], 0))
    state = {k: flat(v) for k, v in start.items()}
    feat = self.rssm.get_feat(state)
    feats, actions, policies = [feat], [], []
    for _ in range(horizon):
      dist = policy(tf.stop_gradient(feat))
      action = dist.sample()
      state = self.rssm.img_step(state, action)
      feat = self.rssm.get_feat(state)
      feats.append(feat)
      actions.append(action)
      policies.append(dist)
    seq = {'feat': tf.stack(feats, 0)}
    seq['action'] = tf.stack([tf.zeros_like(actions[0])] + actions, 0)
    seq['policy'] = policies
    if 'discount' in self.heads:
      disc = self.heads['discount'](seq['feat']).mean()
      if is_terminal is not None:
        # The first state is real: take its discount from replay.
        true_first = 1.0 - tf.cast(flat(is_terminal), tf.float32)
        disc = tf.concat([true_first[None] * self.config.discount, disc[1:]], 0)
    else:
      disc = self.config.discount * tf.ones(tf.shape(seq['feat'])[:-1])
    seq['discount'] = disc
    # d_t says whether s_{t+1} is valid, so the weights are shifted by one.
    seq['weight'] = tf.stop_gradient(tf.math.cumprod(
        tf.concat([tf.ones_like(disc[:1]), disc[:-1]], 0), 0))
    return seq

  def preprocess(self, obs):
    dtype = nets.compute_dtype()
    obs = dict(obs)
    for key, value in obs.items():
      if key.startswith('log_') or key in (
          'is_first', 'is_last', 'is_terminal'):
        continue
      if value.dtype == tf.uint8:
        obs[key] = tf.cast(value, dtype) / 255.0 - 0.5
      elif value.dtype == tf.int32:
        obs[key] = tf.cast(value, dtype)
    if 'reward' in obs:
      clip = choices.check(
          'clip_rewards', self.config.clip_rewards, choices.CLIP_REWARDS)
      squash = {'identity': tf.identity, 'sign': tf.sign, 'tanh': tf.tanh}
      obs['reward'] = squash[clip](tf.cast(obs['reward'], tf.float32))
    if 'is_terminal' in obs:
      obs['discount'] = self.config.discount * (
          1.0 - tf.cast(obs['is_terminal'], tf.float32))
    return obs

  def video_pred(self, data, key, context=5, videos=6):
    data = self.preprocess(data)
    data = {k: v[:videos] for k, v in data.items()}
    truth = tf.cast(data[key], tf.float32) + 0.5
    embed = self.encoder(data)
    states, _ = self.rssm.observe(
        embed[:, :context], data['action'][:, :context],
        data['is_first'][:, :context])
    decoder = self.heads['decoder']
    recon = decoder(self.rssm.get_feat(states))[key].mode()
    init = {k: v[:, -1] for k, v in states.items()}
    prior = self.rssm.imagine(data['action'][:, context:], init)
    openl = decoder(self.rssm.get_feat(prior))[key].mode()
    model = tf.clip_by_value(tf.concat([recon + 0.5, openl + 0.5], 1), 0, 1)
    error = (model - truth + 1) / 2
    video = tf.concat([truth, model, error], 2)   # [B, T, 3H, W, C]
    video = tf.transpose(video, [1, 2, 0, 3, 4])  # [T, 3H, B, W, C]
    shape = tf.shape(video)
    video = tf.reshape(
        video, [shape[0], shape[1], shape[2] * shape[3], shape[4]])
    return tf.cast(tf.clip_by_value(video, 0, 1) * 255, tf.uint8)


class ActorCritic(tf.Module):

  def __init__(self, config, action_size, discrete, feat_size, tfstep,
               name='actor_critic'):
    """discrete: whether the actions are one-hot, or the parts of an action
    of several, ((name, kind, size), ...) as in envs.ActionParts."""
    super().__init__(name=name)
    self.config = config
    self.tfstep = tfstep
    actor = dict(config.actor)
    parts = action_parts(discrete)
    if parts:
      # One head per part: onehot for the discrete ones, actor.dist for the
      # continuous ones.
      actor['dist'] = _continuous_dist(actor['dist'], parts)
      actor['parts'] = parts
      discrete = any(kind == 'discrete' for _, kind, _ in parts)
    elif actor['dist'] == 'auto':
      actor['dist'] = 'onehot' if discrete else 'trunc_normal'
    self.actor_grad = choices.check(
        'actor_grad', config.actor_grad, choices.ACTOR_GRADS)
    if self.actor_grad == 'auto':
      # Reinforce when any part is discrete, as the original for discrete
      # actions: the dynamics gradient through a one-hot sample is its
      # straight-through estimate, which is biased, while REINFORCE on the
      # joint log-probability is unbiased for every part (actor_grad
      # dynamics or both can still be set).
      self.actor_grad = 'reinforce' if discrete else 'dynamics'
    self.actor = nets.MLP(feat_size, action_size, **actor)
    self.critic = nets.MLP(feat_size, [], **config.critic)
    if config.slow_target:
      self._target_critic = nets.MLP(
          feat_size, [], trainable=False, **config.critic)
      self._updates = tf.Variable(0, dtype=tf.int64, trainable=False)
    else:
      self._target_critic = self.critic
    self.actor_opt = tfutils.Optimizer(
        'actor', self.actor.trainable_variables, **config.actor_opt)
    self.critic_opt = tfutils.Optimizer(
        'critic', self.critic.trainable_variables, **config.critic_opt)
    self.rewnorm = tfutils.StreamNorm(**config.reward_norm)
    self._actor_ent = tfutils.schedule(config.actor_ent)
    self._actor_grad_mix = tfutils.schedule(config.actor_grad_mix)

  def train(self, world_model, start, is_terminal, reward_fn):
    metrics = {}
    with tf.GradientTape() as actor_tape:
      seq = world_model.imagine(
          self.actor, start, is_terminal, self.config.imag_horizon)
      reward = reward_fn(seq)
      seq['reward'], mets1 = self.rewnorm(reward)
      mets1 = {f'reward_{k}': v for k, v in mets1.items()}
      target, mets2 = self.target(seq)
      actor_loss, mets3 = self.actor_loss(seq, target)
    with tf.GradientTape() as critic_tape:
      critic_loss, mets4 = self.critic_loss(seq, target)
    metrics.update(self.actor_opt(actor_tape, actor_loss))
    metrics.update(self.critic_opt(critic_tape, critic_loss))
    metrics.update(**mets1, **mets2, **mets3, **mets4)
    self.update_slow_target()
    return metrics

  def actor_loss(self, seq, target):
    # Actions:      0   [a1]  [a2]   a3
    #                  ^  |  ^  |  ^  |
    #                 /   v /   v /   v
    # States:     [z0]->[z1]-> z2 -> z3
    # Targets:     t0   [t1]  [t2]
    # Baselines:  [v0]  [v1]   v2    v3
    # Entropies:  [e0]  [e1]
    # Weights:    [ 1]  [w1]   w2    w3
    # Loss:        l0    l1
    # The action taken in z_t is a_{t+1}; its return is judged by t_{t+1}.
    # The last two states drop out: one only bootstraps, and the action taken
    # in the other leads nowhere we have a target for.
    metrics = {}
    policy = _StackedDist(seq['policy'][:-1])  # pi(z_0..z_{H-2})
    objective = 0.0
    if self.actor_grad in ('reinforce', 'both'):
      baseline = seq['value'][:-2]  # The slow critic's, from `target`.
      advantage = tf.stop_gradient(target[1:] - baseline)
      action = seq['action'][1:-1]
      if self.actor_grad == 'reinforce':
        # Only here, as the original (its 'both' keeps the straight-through
        # gradient of the sampled action in the log-probability).
        action = tf.stop_gradient(action)
      reinforce = policy.log_prob(action) * advantage
      metrics['actor_advantage_mean'] = tf.reduce_mean(advantage)
      metrics['actor_advantage_std'] = tfutils.batch_std(advantage)
    if self.actor_grad == 'dynamics':
      objective = target[1:]
    elif self.actor_grad == 'reinforce':
      objective = reinforce
    else:
      mix = self._actor_grad_mix(self.tfstep)
      objective = mix * target[1:] + (1 - mix) * reinforce
      metrics['actor_grad_mix'] = mix
    ent = policy.entropy()
    ent_scale = self._actor_ent(self.tfstep)
    objective += ent_scale * ent
    weight = tf.stop_gradient(seq['weight'])
    actor_loss = -tf.reduce_mean(weight[:-2] * objective)
    metrics['actor_ent'] = tf.reduce_mean(ent)
    metrics['actor_ent_scale'] = ent_scale
    return actor_loss, metrics

  def critic_loss(self, seq, target):
    # States:     [z0]  [z1]  [z2]   z3
    # Rewards:    [r0]  [r1]  [r2]   r3
    # Values:     [v0]  [v1]  [v2]   v3
    # Weights:    [ 1]  [w1]  [w2]   w3
    # Targets:    [t0]  [t1]  [t2]
    # Loss:        l0    l1    l2
    dist = self.critic(tf.stop_gradient(seq['feat'][:-1]))
    target = tf.stop_gradient(target)
    weight = tf.stop_gradient(seq['weight'])
    critic_loss = -tf.reduce_mean(dist.log_prob(target) * weight[:-1])
    return critic_loss, {'critic': tf.reduce_mean(dist.mode())}

  def target(self, seq):
    """λ-returns from the slow critic's values, which it stores in
    seq['value']."""
    # States:     [z0]  [z1]  [z2]  [z3]
    # Rewards:    [r0]  [r1]  [r2]   r3
    # Values:     [v0]  [v1]  [v2]  [v3]
    # Discount:   [d0]  [d1]  [d2]   d3
    # Targets:     t0    t1    t2
    reward = tf.cast(seq['reward'], tf.float32)
    disc = tf.cast(seq['discount'], tf.float32)
    value = self._target_critic(seq['feat']).mode()
    seq['value'] = value  # Also the actor's baseline.
    target = lambda_return(
        reward[:-1], value[:-1], disc[:-1], bootstrap=value[-1],
        lambda_=self.config.discount_lambda)
    metrics = {'critic_slow': tf.reduce_mean(value),
               'critic_target': tf.reduce_mean(target)}
    return target, metrics

  def update_slow_target(self):
    if not self.config.slow_target:
      return
    def update():
      mix = tf.where(
          self._updates == 0, 1.0, float(self.config.slow_target_fraction))
      for s, d in zip(self.critic.variables, self._target_critic.variables):
        tfutils.assign(d, mix * s + (1 - mix) * d)
      return tf.constant(True)
    tf.cond(self._updates % self.config.slow_target_update == 0,
            update, lambda: tf.constant(False))
    tfutils.assign_add(self._updates, 1)


def lambda_return(reward, value, pcont, bootstrap, lambda_):
  """TD(lambda) targets over the time axis 0, computed backwards:
    R_t = r_t + d_t * ((1 - lambda) * v_{t+1} + lambda * R_{t+1}),
    R_T = bootstrap.
  reward, value, pcont: [T, ...]; bootstrap: [...]."""
  next_values = tf.concat([value[1:], bootstrap[None]], 0)
  inputs = reward + pcont * next_values * (1 - lambda_)
  returns, last = [], bootstrap
  for t in reversed(range(reward.shape[0])):
    last = inputs[t] + pcont[t] * lambda_ * last
    returns.append(last)
  return tf.stack(returns[::-1], 0)


def action_noise(action, amount, discrete, parts=None):
  """With `amount` > 0: for one-hot actions, a uniformly random action with
  probability `amount`; for continuous ones, Gaussian noise, clipped to
  [-1, 1]. With `parts` ((name, kind, size), ...), so for each part on its
  own block."""
  if amount == 0:
    return action
  action = tf.cast(action, tf.float32)
  if parts:
    blocks = tf.split(action, [size for _, _, size in parts], -1)
    return tf.concat([
        action_noise(block, amount, kind == 'discrete')
        for block, (_, kind, _) in zip(blocks, parts)], -1)
  if discrete:
    random = tf.one_hot(tf.random.uniform(
        tf.shape(action)[:-1], 0, action.shape[-1], tf.int32), action.shape[-1])
    pick = tf.random.uniform(tf.shape(action)[:-1]) < amount
    return tf.where(pick[..., None], random, action)
  return tf.clip_by_value(
      action + amount * tf.random.normal(tf.shape(action)), -1, 1)


def action_parts(discrete):
  """The parts ((name, kind, size), ...) of an action of several parts
  given where a behaviour takes `discrete` (or envs.ActionParts.parts);
  None for a bool or None (an action of one part)."""
  if discrete is None or isinstance(discrete, (bool, int)):
    return None
  return tuple((str(name), str(kind), int(size))
               for name, kind, size in discrete)


def _continuous_dist(dist, parts):
  """actor.dist for the continuous parts: 'auto' is trunc_normal; with a
  continuous part, it must be a continuous distribution."""
  if dist == 'auto':
    return 'trunc_normal'
  continuous = [name for name, kind, _ in parts if kind == 'continuous']
  if continuous:
    choices.check(f'actor.dist (the action part {continuous[0]!r} is '
                  f'continuous)', dist, ('auto',) + choices.CONTINUOUS_DISTS)
  return dist


class _StackedDist:
  """The per-step policy distributions of an imagined rollout as one [H, B]
  distribution (reuses the rollout's forward pass instead of a second one)."""

  def __init__(self, parts):
    self._parts = parts

  def log_prob(self, value):
    return tf.stack(
        [d.log_prob(value[i]) for i, d in enumerate(self._parts)], 0)

  def entropy(self):
    return tf.stack([d.entropy() for d in self._parts], 0)
