"""carla_env: train RL driving agents on CARLA or on the embedded CARLA-API simulator."""

import gymnasium

from carla_env.config import Config, ConfigError, load_config
from carla_env.env import CarlaEnv
from carla_env.experiment import BaseExperiment

ENV_ID = "carla_env/CarlaEnv-v0"
# gymnasium.make(ENV_ID, config=load_config("experiments/dqn/config.yaml")); the env ends its own
# episodes (experiment.max_steps), so no TimeLimit wrapper is added.
if ENV_ID not in gymnasium.registry:
    gymnasium.register(id=ENV_ID, entry_point="carla_env.env:CarlaEnv")

__all__ = ["ENV_ID", "BaseExperiment", "CarlaEnv", "Config", "ConfigError", "load_config"]
