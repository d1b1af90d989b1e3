"""Parts shared by the agent and the training script.

Import the module you need (`from common import config`): this package imports
nothing itself, so that parsing flags does not load TensorFlow.
"""
