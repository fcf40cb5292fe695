"""Driving metrics of one episode, from the hero's motion, its route and the event sensors."""

from __future__ import annotations

from dataclasses import dataclass

from carla_env.driving_state import DrivingState

COLLISION_PENALTY = 0.60  # CARLA leaderboard: each collision with a vehicle multiplies the score by 0.60
PEDESTRIAN_PENALTY = 0.50  # and each collision with a pedestrian by 0.50
OFF_ROAD_PENALTY = 0.65  # per off-road excursion (the leaderboard's "outside route lanes" analogue)
RED_LIGHT_PENALTY = 0.70  # CARLA leaderboard: each red light run multiplies the score by 0.70


@dataclass
class DrivingMetrics:
    route_length: float = 0.0
    route_progress: float = 0.0
    distance: float = 0.0
    collisions: int = 0  # every collision, pedestrians included
    pedestrian_collisions: int = 0
    lane_invasions: int = 0
    red_light_runs: int = 0
    off_road_seconds: float = 0.0
    off_road_events: int = 0
    seconds: float = 0.0
    steer_change: float = 0.0  # sum of |steer - previous steer|: how much the wheel was turned back and forth
    _was_off_road: bool = False

    def update(self, dt: float, state: DrivingState) -> None:
        self.seconds += dt
        self.steer_change += state.steer_change
        self.distance += state.moved
        self.route_progress = max(self.route_progress, state.progress)
        self.collisions += state.collisions
        self.pedestrian_collisions += state.pedestrian_collisions
        self.lane_invasions += state.lane_invasions
        self.red_light_runs += state.red_light_runs
        if state.off_road:
            self.off_road_seconds += dt
            self.off_road_events += not self._was_off_road
        self._was_off_road = state.off_road

    def summary(self) -> dict[str, float]:
        km = max(self.distance / 1000.0, 1e-3)
        completion = min(self.route_progress / self.route_length, 1.0) if self.route_length else 0.0
        others = self.collisions - self.pedestrian_collisions
        penalty = (
            COLLISION_PENALTY**others
            * PEDESTRIAN_PENALTY**self.pedestrian_collisions
            * OFF_ROAD_PENALTY**self.off_road_events
        )
        penalty *= RED_LIGHT_PENALTY**self.red_light_runs
        return {
            "route_completion": completion,
            "collisions_per_km": self.collisions / km,
            "pedestrian_collisions_per_km": self.pedestrian_collisions / km,
            "lane_invasions_per_km": self.lane_invasions / km,
            "red_light_runs_per_km": self.red_light_runs / km,
            "off_road_seconds": self.off_road_seconds,
            "mean_speed": self.distance / self.seconds if self.seconds else 0.0,
            # Steer travel per simulated second: ~0 for a smooth driver; 20 for one flipping full left
            # and full right every 0.1 s step.
            "steer_change_per_s": self.steer_change / self.seconds if self.seconds else 0.0,
            "route_seconds": self.seconds,  # simulated seconds driven
            "distance_m": self.distance,
            "route_length_m": self.route_length,  # short routes make completion easy: logged beside it
            "driving_score": completion * penalty,
            "collisions": float(self.collisions),
            "pedestrian_collisions": float(self.pedestrian_collisions),
            "lane_invasions": float(self.lane_invasions),
            "red_light_runs": float(self.red_light_runs),
            "steer_change": self.steer_change,
        }
