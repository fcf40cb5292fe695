"""A lane-following driver (pure pursuit on the lane graph) for demos and benchmarks.

It keeps its lane and speed and picks random turns; it does not yield to traffic
or lights (the reference autopilot with those is its own experiment).
"""

from __future__ import annotations

import math

import carla
import numpy as np

from carla_env.maps.lane_graph import LaneGraph
from carla_env.vehicle import MAX_WHEEL_ANGLE


class LaneFollower:
    def __init__(
        self, lanes: LaneGraph, target_speed: float = 8.0, wheelbase: float = 2.88, seed: int = 0
    ) -> None:
        self.lanes = lanes
        self.target_speed = target_speed
        self.wheelbase = wheelbase
        self._rng = np.random.default_rng(seed)
        self._next: dict[int, int] = {}

    def _successor(self, lane: int) -> int:
        if lane not in self._next:
            succ = [s for s in self.lanes.successors(lane) if self.lanes.lane_main[s]] or list(
                self.lanes.successors(lane)
            )
            self._next = {lane: int(self._rng.choice(succ)) if succ else lane}
        return self._next[lane]

    def run_step(self, vehicle) -> carla.VehicleControl:
        t = vehicle.get_transform()
        v = vehicle.get_velocity()
        speed = math.hypot(v.x, v.y)
        yaw = math.radians(t.rotation.yaw)
        lane, s, _ = self.lanes.locate((t.location.x, t.location.y, t.location.z), yaw)
        ahead = s + max(5.0, 0.8 * speed)
        while ahead > self.lanes.lane_length[lane]:
            ahead -= self.lanes.lane_length[lane]
            lane = self._successor(lane)
        target, _ = self.lanes.interpolate(np.array([lane]), np.array([ahead]))
        dx, dy = target[0, 0] - t.location.x, target[0, 1] - t.location.y
        alpha = math.atan2(dy, dx) - yaw
        alpha = (alpha + math.pi) % (2 * math.pi) - math.pi
        wheel = math.atan2(2.0 * self.wheelbase * math.sin(alpha), math.hypot(dx, dy))
        error = self.target_speed - speed
        return carla.VehicleControl(
            throttle=float(np.clip(0.3 * error, 0.0, 0.8)),
            brake=float(np.clip(-0.3 * error, 0.0, 1.0)),
            steer=float(np.clip(wheel / MAX_WHEEL_ANGLE, -1.0, 1.0)),
        )
