"""Driving metrics of one episode, from the hero's motion, its route and the event sensors."""

from __future__ import annotations

import math
from dataclasses import dataclass

COLLISION_PENALTY = 0.60  # CARLA leaderboard: each collision with a vehicle multiplies the score by 0.60
OFF_ROAD_PENALTY = 0.65  # per off-road excursion (the leaderboard's "outside route lanes" analogue)


@dataclass
class DrivingMetrics:
    route_length: float = 0.0
    route_progress: float = 0.0
    distance: float = 0.0
    collisions: int = 0
    lane_invasions: int = 0
    off_road_seconds: float = 0.0
    off_road_events: int = 0
    seconds: float = 0.0
    _was_off_road: bool = False

    def update(
        self, dt: float, moved: float, progress: float, collisions: int, invasions: int, off_road: bool
    ):
        self.seconds += dt
        self.distance += moved
        self.route_progress = max(self.route_progress, progress)
        self.collisions += collisions
        self.lane_invasions += invasions
        if off_road:
            self.off_road_seconds += dt
            self.off_road_events += not self._was_off_road
        self._was_off_road = off_road

    def summary(self) -> dict[str, float]:
        km = max(self.distance / 1000.0, 1e-3)
        completion = min(self.route_progress / self.route_length, 1.0) if self.route_length else 0.0
        penalty = COLLISION_PENALTY**self.collisions * OFF_ROAD_PENALTY**self.off_road_events
        return {
            "route_completion": completion,
            "collisions_per_km": self.collisions / km,
            "lane_invasions_per_km": self.lane_invasions / km,
            "off_road_seconds": self.off_road_seconds,
            "mean_speed": self.distance / self.seconds if self.seconds else 0.0,
            "distance_m": self.distance,
            "driving_score": completion * penalty,
            "collisions": float(self.collisions),
            "lane_invasions": float(self.lane_invasions),
        }


def distance(a, b) -> float:
    return math.hypot(a.x - b.x, a.y - b.y)
