"""The embedded simulator: an in-process world on the CARLA API, no server."""

from carla_env.embedded.world import EmbeddedWorld, LightTiming

__all__ = ["EmbeddedWorld", "LightTiming"]
