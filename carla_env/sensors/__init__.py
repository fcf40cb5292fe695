"""Sensors shared by both backends: the bird's-eye view and its scene adapter."""

from carla_env.sensors.birdview import BirdviewRenderer, BirdviewSpec, Scene, pack, unpack
from carla_env.sensors.scene import scene_from_world

__all__ = ["BirdviewRenderer", "BirdviewSpec", "Scene", "pack", "scene_from_world", "unpack"]
