"""carla_env: train RL driving agents on CARLA or on the embedded CARLA-API simulator."""

from carla_env.config import Config, ConfigError, load_config
from carla_env.env import CarlaEnv
from carla_env.experiment import BaseExperiment

__all__ = ["BaseExperiment", "CarlaEnv", "Config", "ConfigError", "load_config"]
