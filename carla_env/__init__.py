"""carla_env: train RL driving agents on CARLA or on the embedded CARLA-API simulator."""

from carla_env.config import Config, ConfigError, load_config

__all__ = ["Config", "ConfigError", "load_config"]
