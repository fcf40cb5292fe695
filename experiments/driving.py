"""Route driving on the bird's-eye view, shared by the DQN and PPO experiments: packed BEV
observation, reward for progress along the route with penalties for leaving the lane, wrong
heading, collisions and idling; terminates on collision, off-road, route done or (optionally)
leaving the route."""

from __future__ import annotations

import math

import gymnasium as gym
from pydantic import BaseModel, ConfigDict, Field

from carla_env.experiment import BaseExperiment, count_events, is_off_road


class DrivingOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    progress_reward: float = 0.1  # per metre of route progress
    collision_penalty: float = 10.0
    off_road_penalty: float = 5.0
    wrong_heading_penalty: float = 0.2  # per step heading more than 90 deg off the route
    idle_penalty: float = 0.02  # per step below 0.5 m/s
    speeding_penalty: float = 0.0  # per step, per m/s above the lane's speed limit (experiments/ppo: 0.05)
    lane_invasion_penalty: float = 0.0  # per crossed marking event (experiments/ppo: 1.0)
    # Metres from the route after which the episode ends (0: never), as CARLA's leaderboard ends a
    # route on deviation: a wrong turn then costs its penalty at once, not a long drive elsewhere.
    max_route_deviation: float = Field(0.0, ge=0.0)
    route_deviation_penalty: float = 5.0
    birdview_sensor: str = "birdview"


class RouteDrivingExperiment(BaseExperiment):
    Options = DrivingOptions

    def __init__(self, config, options: DrivingOptions) -> None:
        super().__init__(config, options)
        bev = config.sensors.get(options.birdview_sensor)
        if bev is None or bev.type != "sensor.birdview":
            raise ValueError(
                f"experiment.sensors.{options.birdview_sensor}: the route-driving experiment needs a sensor.birdview"
            )
        self._obs_space = bev.observation_space()
        self._last_progress = 0.0

    def get_observation_space(self) -> gym.Space:
        return self._obs_space

    def reset(self, core, rng) -> None:
        super().reset(core, rng)
        self._last_progress = 0.0
        self._collided = False
        self._invasions = 0

    def get_observation(self, sensor_data: dict, core):
        _, bev = sensor_data[self.options.birdview_sensor]
        collided = count_events(self.config.sensors, sensor_data, "sensor.other.collision") > 0
        self._collided = self._collided or collided
        self._invasions = count_events(self.config.sensors, sensor_data, "sensor.other.lane_invasion")
        return bev, {}

    def _nearest_route_point(self, core) -> tuple[int, float]:
        loc = core.hero.get_location()
        return self.route.nearest((loc.x, loc.y))

    def _off_route(self, core) -> bool:
        limit = self.options.max_route_deviation
        return limit > 0 and self._nearest_route_point(core)[1] > limit

    def _heading_error(self, core) -> float:
        t = core.hero.get_transform()
        pts = self.route.points
        k, _ = self._nearest_route_point(core)
        a, b = pts[max(k - 1, 0)], pts[min(k + 1, len(pts) - 1)]
        route_yaw = math.atan2(b[1] - a[1], b[0] - a[0])
        return abs((math.radians(t.rotation.yaw) - route_yaw + math.pi) % (2 * math.pi) - math.pi)

    def get_done_status(self, observation, core):
        off_road = is_off_road(core)
        loc = core.hero.get_location()
        done_route = self.route.progress((loc.x, loc.y)) >= self.route.length - 2.0
        return bool(self._collided or off_road or done_route or self._off_route(core)), False

    def compute_reward(self, observation, core) -> float:
        o = self.options
        loc = core.hero.get_location()
        progress = self.route.progress((loc.x, loc.y))
        reward = o.progress_reward * max(min(progress - self._last_progress, 5.0), -5.0)
        self._last_progress = max(self._last_progress, progress)
        v = core.hero.get_velocity()
        speed = math.hypot(v.x, v.y)
        if speed < 0.5:
            reward -= o.idle_penalty
        limit = core.hero.get_speed_limit() / 3.6  # km/h in CARLA's API
        if limit > 0:
            reward -= o.speeding_penalty * max(speed - limit, 0.0)
        reward -= o.lane_invasion_penalty * self._invasions
        if self._heading_error(core) > math.pi / 2:
            reward -= o.wrong_heading_penalty
        if self._collided:
            reward -= o.collision_penalty
        if is_off_road(core):
            reward -= o.off_road_penalty
        if self._off_route(core):
            reward -= o.route_deviation_penalty
        return reward
