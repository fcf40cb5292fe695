"""PPO on the route-driving task: continuous steer and acceleration (positive: throttle, negative: brake)."""

from __future__ import annotations

import carla
import gymnasium as gym
import numpy as np

from experiments.driving import RouteDrivingExperiment


class PPOExperiment(RouteDrivingExperiment):
    def get_action_space(self) -> gym.Space:
        return gym.spaces.Box(-1.0, 1.0, (2,), np.float32)  # steer, acceleration

    def compute_action(self, action) -> carla.VehicleControl:
        steer, accel = (min(max(float(a), -1.0), 1.0) for a in action)  # floats: numpy per step costs more
        return carla.VehicleControl(throttle=max(accel, 0.0), brake=max(-accel, 0.0), steer=steer)
