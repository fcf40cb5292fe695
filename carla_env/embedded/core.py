"""The embedded backend's core: owns an EmbeddedWorld, its hero and its traffic."""

from __future__ import annotations

import carla
import numpy as np

from carla_env.config import SimulatorConfig
from carla_env.embedded.world import EmbeddedWorld, LightTiming
from carla_env.maps.town import load_town
from carla_env.sensors.birdview import Scene
from carla_env.simulator import BIRDVIEW, EVENT_SENSORS

HERO_BLUEPRINT = "vehicle.tesla.model3"


class EmbeddedCore:
    """The built-in simulator in this process (satisfies carla_env.simulator.SimulatorCore)."""

    backend = "embedded"
    sensor_types = (*EVENT_SENSORS, BIRDVIEW)

    def __init__(self, config: SimulatorConfig, hero_blueprint: str = HERO_BLUEPRINT) -> None:
        self.config = config
        self.town = load_town(config.town)
        self.map = self.town.map
        self.hero_blueprint = hero_blueprint
        self.world: EmbeddedWorld | None = None
        self.hero = None
        self._episode = 0

    def reset(self, seed: int | None = None, hero_transform: carla.Transform | None = None) -> None:
        """A fresh world: hero at a (seeded) spawn point, background traffic around it."""
        seed = self.config.seed + self._episode if seed is None else seed
        self._episode += 1
        cfg = self.config
        self.world = EmbeddedWorld(
            self.town,
            seed=seed,
            delta_seconds=cfg.timestep,
            light_timing=LightTiming(**cfg.lights.model_dump()),
        )
        bp = self.world.get_blueprint_library().find(self.hero_blueprint)
        bp.set_attribute("role_name", "hero")
        if hero_transform is None:
            points = self.town.spawn_points(seed=int(np.random.default_rng(seed).integers(2**31)))
            hero_transform = points[0]
        self.hero = self.world.spawn_actor(bp, hero_transform)
        self.world.spawn_traffic(cfg.traffic.vehicles, spacing=cfg.traffic.spawn_spacing)
        # The same key as the CARLA core's, so a config written for CARLA runs unchanged.
        self.world.spawn_walkers(cfg.carla.walkers, seed=seed, cross_factor=cfg.carla.walker_cross_factor)

    def tick(self, control: carla.VehicleControl | None) -> int:
        if control is not None:
            self.hero.apply_control(control)
        return self.world.tick()

    def on_driving_lane(self, actor) -> bool:
        return self.world.on_driving_lane(actor)

    def birdview_scene(self, hero) -> Scene:
        return self.world.birdview_scene(hero)

    def stats(self) -> dict[str, float]:
        return {}  # in-process: no server to restart, no tick latency worth logging

    def close(self) -> None:
        self.world = None
        self.hero = None
