"""BaseExperiment: the user's extension point, with the original rllib-integration hooks.

Experiments talk to the world through the CARLA API only (`core.world`, `core.map`,
`core.hero`), so one experiment runs unchanged on both backends.
"""

from __future__ import annotations

import math

import carla
import gymnasium as gym
import numpy as np
from pydantic import BaseModel, ConfigDict

from carla_env.driving_state import DrivingState
from carla_env.maps.route import Route, random_route


class NoOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BaseExperiment:
    """Subclass and override the hooks. `Options` declares the experiment's own config keys."""

    Options: type[BaseModel] = NoOptions

    def __init__(self, config, options: BaseModel) -> None:
        self.config = config  # the validated ExperimentConfig
        self.options = options
        self.route: Route | None = None
        # This step's facts (route progress, off-road, events, speed), computed once by the env after
        # each tick and set here before get_observation, get_done_status and compute_reward run, so the
        # hooks keep their signatures and read one state instead of querying the core again.
        self.driving_state: DrivingState | None = None

    # --- spaces
    def get_action_space(self) -> gym.Space:
        raise NotImplementedError

    def get_observation_space(self) -> gym.Space:
        raise NotImplementedError

    # --- episode
    def reset(self, core, rng: np.random.Generator) -> None:
        """Called after the hero is spawned: plan a route ahead of it."""
        lanes = core.town.lanes
        t = core.hero.get_transform()
        lane, s, _ = lanes.locate((t.location.x, t.location.y, t.location.z), math.radians(t.rotation.yaw))
        self.route = random_route(lanes, (lane, s), self.config.route_length, rng)

    def compute_action(self, action) -> carla.VehicleControl:
        raise NotImplementedError

    def get_observation(self, sensor_data: dict, core) -> tuple[object, dict]:
        raise NotImplementedError

    def get_done_status(self, observation, core) -> tuple[bool, bool]:
        """(terminated, truncated); the env truncates at max_steps on its own."""
        return False, False

    def compute_reward(self, observation, core) -> float:
        raise NotImplementedError


def parse_transform(text: str) -> carla.Transform:
    """The original's spawn-point strings: "x,y,z[,roll,pitch,yaw]" (degrees)."""
    parts = [float(p) for p in text.split(",")]
    if len(parts) not in (3, 6):
        raise ValueError(f"spawn point {text!r}: expected 'x,y,z' or 'x,y,z,roll,pitch,yaw'")
    x, y, z, roll, pitch, yaw = parts + [0.0] * (6 - len(parts))
    return carla.Transform(carla.Location(x, y, z), carla.Rotation(pitch=pitch, yaw=yaw, roll=roll))
