"""The reference autopilot: pure pursuit along the planned route with a PI speed controller; it
slows behind any vehicle whose box is on its path (a leader in its lane, or one standing across or
half out of it), stops for a pedestrian on its path or about to step onto it,
stops at red and yellow lights, and waits at a junction's entry while another vehicle is on, or
about to reach, its path through the junction. Only CARLA API calls
on the hero and world (and the planned route), so it drives either backend.

`action()` gives it as a continuous [steer, acceleration] action (the PPO experiment's), so it is
scored in the very env a trained policy is scored in (`carla_env.evaluate`).
"""

from __future__ import annotations

import math

import carla
import numpy as np

from carla_env.agents.pursuit import pure_pursuit_steer
from carla_env.driving_state import (
    COMFORT_DECEL,
    COMMIT_DECEL,
    ENTRY_STOP_MARGIN,
    LANE_HALF_WIDTH,
    VEHICLE_CLEARANCE,
    WALKER_CLEARANCE,
    OtherVehicles,
    curvature_ahead,
    junction_entry_to_yield_at,
    vehicle_gap,
    walker_gap,
)

STOP_STATES = (carla.TrafficLightState.Red, carla.TrafficLightState.Yellow)


class RouteAutopilot:
    def __init__(
        self,
        cruise_speed: float = 8.0,  # m/s, capped by the lane's speed limit
        time_gap: float = 1.5,  # s, to a leader
        standstill_gap: float = 2.0,  # m between the bumpers at rest
        lane_half_width: float = LANE_HALF_WIDTH,  # m: a vehicle centre this close to the route is in its lane
        lateral_accel: float = 2.0,  # m/s^2 in curves: sets the cornering speed
        comfort_decel: float = COMFORT_DECEL,  # m/s^2: junctions within this braking distance are checked
        max_decel: float = COMMIT_DECEL,  # m/s^2: a junction nearer than this braking distance is committed to
        clearance: float = VEHICLE_CLEARANCE,  # m between the sides of two vehicles on one path
        walker_clearance: float = WALKER_CLEARANCE,  # m from the car's side to a walker's centre on its path
        wheelbase: float = 2.88,
        lookahead: float = 2.0,  # m, pure pursuit's target distance at standstill
        lookahead_time: float = 0.3,  # s per m/s of speed; longer cuts the inside of bends over the line
        kp: float = 0.35,
        ki: float = 0.05,
    ) -> None:
        self.cruise_speed, self.time_gap, self.standstill_gap = cruise_speed, time_gap, standstill_gap
        self.lane_half_width, self.wheelbase, self.kp, self.ki = lane_half_width, wheelbase, kp, ki
        self.lateral_accel, self.comfort_decel, self.clearance = lateral_accel, comfort_decel, clearance
        self.max_decel, self.walker_clearance = max_decel, walker_clearance
        self.lookahead, self.lookahead_time = lookahead, lookahead_time
        self._integral = 0.0

    def reset(self) -> None:
        self._integral = 0.0

    def run_step(self, hero, route, dt: float) -> carla.VehicleControl:
        t = hero.get_transform()
        v = hero.get_velocity()
        speed = math.hypot(v.x, v.y)
        index = route.nearest((t.location.x, t.location.y))[0]
        here = float(route.distance[index])
        steer = self._steer(t, route, here + self.lookahead + self.lookahead_time * speed)
        target = min(self.cruise_speed, hero.get_speed_limit() / 3.6 or self.cruise_speed)
        target = min(target, self._curve_speed(route, here))
        others = OtherVehicles.from_world(hero)
        gap = self._leader_gap(hero, others, route, here)
        if gap is not None:
            target = min(target, max(0.0, (gap - self.standstill_gap) / self.time_gap))
        walker = self._walker_gap(hero, route, here)
        if walker is not None:  # stop with the front bumper two metres short of the walker
            target = min(target, max(0.0, (walker - hero.bounding_box.extent.x - 2.0) / self.time_gap))
        entry = self._entry_to_yield_at(hero, others, route, index, speed)
        if entry is not None:  # stop with the front bumper a metre short of the junction
            room = entry - here - hero.bounding_box.extent.x - ENTRY_STOP_MARGIN
            target = min(target, max(0.0, room / self.time_gap))
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
        return pure_pursuit_steer(t, x, y, self.wheelbase)

    def _curve_speed(self, route, here: float, horizon: float = 15.0) -> float:
        """The speed that keeps lateral acceleration under its limit on the sharpest bend ahead."""
        curvature = curvature_ahead(route, here, horizon)[1].max(initial=0.0)
        return math.sqrt(self.lateral_accel / curvature) if curvature > 1e-4 else math.inf

    def _leader_gap(self, hero, others: OtherVehicles, route, here: float) -> float | None:
        """vehicle_gap of the vehicles as the CARLA API reports them."""
        t, extent = hero.get_transform(), hero.bounding_box.extent
        ego = (t.location.x, t.location.y, math.radians(t.rotation.yaw), extent.x, extent.y)
        return vehicle_gap(route, here, ego, others.boxes, self.clearance)

    def _walker_gap(self, hero, route, here: float) -> float | None:
        """walker_gap of the walkers as the CARLA API reports them."""
        xy, velocity = [], []
        for w in hero.get_world().get_actors().filter("walker.*"):
            loc, v = w.get_location(), w.get_velocity()
            xy.append((loc.x, loc.y))
            velocity.append((v.x, v.y))
        xy, velocity = np.array(xy, float).reshape(-1, 2), np.array(velocity, float).reshape(-1, 2)
        return walker_gap(xy, velocity, route, here, hero.bounding_box.extent.y, self.walker_clearance)

    def _entry_to_yield_at(
        self, hero, others: OtherVehicles, route, index: int, speed: float
    ) -> float | None:
        """junction_entry_to_yield_at with this autopilot's settings."""
        extent = hero.bounding_box.extent
        return junction_entry_to_yield_at(
            route,
            index,
            speed,
            extent.x,
            extent.y,
            others,
            lane_half_width=self.lane_half_width,
            clearance=self.clearance,
            comfort_decel=self.comfort_decel,
            max_decel=self.max_decel,
        )
