"""The reference autopilot: pure pursuit along the planned route with a PI speed controller; it
slows behind a leader on its route and stops at red and yellow lights. Only CARLA API calls on the
hero and world, so it drives either backend.

Its action is the PPO experiment's [steer, acceleration], so it is scored in the very env a
trained PPO agent is scored in (`bench/learning.py`).
"""

from __future__ import annotations

import math

import carla
import numpy as np

from carla_env.vehicle import MAX_WHEEL_ANGLE

STOP_STATES = (carla.TrafficLightState.Red, carla.TrafficLightState.Yellow)


class RouteAutopilot:
    def __init__(
        self,
        cruise_speed: float = 8.0,  # m/s, capped by the lane's speed limit
        time_gap: float = 1.5,  # s, to a leader
        standstill_gap: float = 7.0,  # m between centres at rest
        lane_half_width: float = 1.8,  # m: a vehicle this close to the route is on it
        lateral_accel: float = 2.0,  # m/s^2 in curves: sets the cornering speed
        wheelbase: float = 2.88,
        lookahead: float = 2.0,  # m, pure pursuit's target distance at standstill
        lookahead_time: float = 0.3,  # s per m/s of speed; longer cuts the inside of bends over the line
        kp: float = 0.35,
        ki: float = 0.05,
    ) -> None:
        self.cruise_speed, self.time_gap, self.standstill_gap = cruise_speed, time_gap, standstill_gap
        self.lane_half_width, self.wheelbase, self.kp, self.ki = lane_half_width, wheelbase, kp, ki
        self.lateral_accel = lateral_accel
        self.lookahead, self.lookahead_time = lookahead, lookahead_time
        self._integral = 0.0

    def reset(self) -> None:
        self._integral = 0.0

    def run_step(self, hero, route, dt: float) -> carla.VehicleControl:
        t = hero.get_transform()
        v = hero.get_velocity()
        speed = math.hypot(v.x, v.y)
        here = route.progress((t.location.x, t.location.y))
        steer = self._steer(t, route, here + self.lookahead + self.lookahead_time * speed)
        target = min(self.cruise_speed, hero.get_speed_limit() / 3.6 or self.cruise_speed)
        target = min(target, self._curve_speed(route, here))
        gap = self._leader_gap(hero, route, here)
        if gap is not None:
            target = min(target, max(0.0, (gap - self.standstill_gap) / self.time_gap))
        if hero.is_at_traffic_light() and hero.get_traffic_light_state() in STOP_STATES:
            target = 0.0
        error = target - speed
        self._integral = float(np.clip(self._integral + error * dt, -5.0, 5.0))
        accel = self.kp * error + self.ki * self._integral
        if target == 0.0:
            accel, self._integral = -1.0, 0.0
        return carla.VehicleControl(
            throttle=float(np.clip(accel, 0.0, 0.75)), brake=float(np.clip(-accel, 0.0, 1.0)), steer=steer
        )

    def action(self, hero, route, dt: float) -> np.ndarray:
        """run_step as the PPO experiment's action: [steer, throttle - brake]."""
        c = self.run_step(hero, route, dt)
        return np.array([c.steer, c.throttle - c.brake], np.float32)

    def _steer(self, t, route, ahead: float) -> float:
        x = float(np.interp(ahead, route.distance, route.points[:, 0]))
        y = float(np.interp(ahead, route.distance, route.points[:, 1]))
        dx, dy = x - t.location.x, y - t.location.y
        alpha = math.atan2(dy, dx) - math.radians(t.rotation.yaw)
        alpha = (alpha + math.pi) % (2 * math.pi) - math.pi
        wheel = math.atan2(2.0 * self.wheelbase * math.sin(alpha), max(math.hypot(dx, dy), 1e-3))
        return float(np.clip(wheel / MAX_WHEEL_ANGLE, -1.0, 1.0))

    def _curve_speed(self, route, here: float, horizon: float = 15.0) -> float:
        """The speed that keeps lateral acceleration under its limit on the sharpest bend ahead."""
        s = here + np.arange(0.0, horizon + 2.5, 2.5)
        x = np.interp(s, route.distance, route.points[:, 0])
        y = np.interp(s, route.distance, route.points[:, 1])
        heading = np.unwrap(np.arctan2(np.diff(y), np.diff(x)))
        curvature = np.abs(np.diff(heading)).max(initial=0.0) / 2.5
        return math.sqrt(self.lateral_accel / curvature) if curvature > 1e-4 else math.inf

    def _leader_gap(self, hero, route, here: float, horizon: float = 40.0) -> float | None:
        """Distance along the route to the nearest other vehicle on it within `horizon` metres."""
        ahead = (route.distance > here) & (route.distance < here + horizon)
        if not ahead.any():
            return None
        pts, dist = route.points[ahead], route.distance[ahead]
        best = None
        for actor in hero.get_world().get_actors().filter("vehicle.*"):
            if actor.id == hero.id:
                continue
            loc = actor.get_location()
            d = np.hypot(pts[:, 0] - loc.x, pts[:, 1] - loc.y)
            k = int(np.argmin(d))
            if d[k] < self.lane_half_width:
                gap = float(dist[k] - here)
                best = gap if best is None else min(best, gap)
        return best
