"""The DQN example, redone: discrete steer x throttle/brake actions on the route-driving task."""

from __future__ import annotations

import carla
import gymnasium as gym
from pydantic import Field

from experiments.driving import DrivingOptions, RouteDrivingExperiment


class Options(DrivingOptions):
    steer: list[float] = Field(default=[-0.5, -0.2, 0.0, 0.2, 0.5], min_length=1)
    # (throttle, brake) pairs: accelerate, coast, brake.
    pedals: list[tuple[float, float]] = Field(default=[(0.6, 0.0), (0.0, 0.0), (0.0, 0.8)], min_length=1)


class DQNExperiment(RouteDrivingExperiment):
    Options = Options

    def __init__(self, config, options: Options) -> None:
        super().__init__(config, options)
        self.actions = [(s, t, b) for s in options.steer for t, b in options.pedals]

    def get_action_space(self) -> gym.Space:
        return gym.spaces.Discrete(len(self.actions))

    def compute_action(self, action) -> carla.VehicleControl:
        steer, throttle, brake = self.actions[int(action)]
        return carla.VehicleControl(throttle=throttle, steer=steer, brake=brake)
