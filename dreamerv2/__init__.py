"""DreamerV2 in TensorFlow 2: world model, actor-critic and exploration."""
