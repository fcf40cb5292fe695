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
    VEHICLE_CLEARANCE,
    WALKER_CLEARANCE,
    curvature_ahead,
    vehicle_gap,
    walker_gap,
)

STOP_STATES = (carla.TrafficLightState.Red, carla.TrafficLightState.Yellow)
PREDICTION_TIMES = np.linspace(0.0, 4.0, 9)  # s: others' positions checked against the junction path
FOLLOWER_RANGE = 30.0  # m of route behind the hero where a car in its direction follows it


class RouteAutopilot:
    def __init__(
        self,
        cruise_speed: float = 8.0,  # m/s, capped by the lane's speed limit
        time_gap: float = 1.5,  # s, to a leader
        standstill_gap: float = 2.0,  # m between the bumpers at rest
        lane_half_width: float = 1.8,  # m: a vehicle centre this close to the route is in its lane
        lateral_accel: float = 2.0,  # m/s^2 in curves: sets the cornering speed
        comfort_decel: float = 2.5,  # m/s^2: junctions within this braking distance are checked
        max_decel: float = 6.0,  # m/s^2: a junction nearer than this braking distance is committed to
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
        others = _Others(hero)
        gap = self._leader_gap(hero, others, route, here)
        if gap is not None:
            target = min(target, max(0.0, (gap - self.standstill_gap) / self.time_gap))
        walker = self._walker_gap(hero, route, here)
        if walker is not None:  # stop with the front bumper two metres short of the walker
            target = min(target, max(0.0, (walker - hero.bounding_box.extent.x - 2.0) / self.time_gap))
        entry = self._entry_to_yield_at(hero, others, route, index, speed)
        if entry is not None:  # stop with the front bumper a metre short of the junction
            target = min(target, max(0.0, (entry - here - hero.bounding_box.extent.x - 1.0) / self.time_gap))
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

    def _leader_gap(self, hero, others: _Others, route, here: float) -> float | None:
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

    def _entry_to_yield_at(self, hero, others: _Others, route, index: int, speed: float) -> float | None:
        """Where along the route the hero must wait (the next junction's entry), or None to drive on.

        It waits while another vehicle is on its path through the junction (and the car length after
        it, where turning traffic merges), or will be within 4 s at its speed and acceleration (up to
        where it stops, if it is braking). Vehicles on the route in the hero's direction are leaders or followers,
        not crossing traffic. Inside a junction, or too near to stop before it, the hero has committed:
        braking there would leave it on the crossing path."""
        if route.junction[index] or not len(others.xy):
            return None
        ahead = np.flatnonzero(route.junction[index:])
        if not len(ahead):
            return None
        first = index + int(ahead[0])
        entry, here = float(route.distance[first]), float(route.distance[index])
        extent = hero.bounding_box.extent
        room = entry - here - extent.x - 1.0  # to the stop point
        # Committed: too near to stop before the junction (the front bumper at its entry). One that
        # crept past its stop point while waiting can still stop short of the junction, and waits.
        if room > speed * speed / (2.0 * self.comfort_decel) + 4.0 or room + 1.0 < speed * speed / (
            2.0 * self.max_decel
        ):
            return None
        after = np.flatnonzero(~route.junction[first:])
        leave = float(route.distance[first + int(after[0])]) if len(after) else route.length
        path = route.points[(route.distance >= entry) & (route.distance <= leave + 2.0 * extent.x)]
        # Others on the route in its direction are leaders and followers, which the leader gap handles:
        # on the stretch from FOLLOWER_RANGE behind the hero to the path's end, not on a later pass of
        # a route that comes back through this junction.
        near = (route.distance >= here - FOLLOWER_RANGE) & (route.distance <= leave + 2.0 * extent.x)
        pts, yaws = route.points[near], route.headings[near]
        d = np.hypot(pts[None, :, 0] - others.xy[:, None, 0], pts[None, :, 1] - others.xy[:, None, 1])
        nearest = d.argmin(axis=1)
        turn = np.remainder(others.yaw - yaws[nearest] + np.pi, 2 * np.pi) - np.pi
        on_route = d[np.arange(len(nearest)), nearest] < self.lane_half_width
        crossing = ~(on_route & (np.abs(turn) < np.pi / 4))
        if not crossing.any():
            return None
        t, accel = PREDICTION_TIMES[None, :], others.accel[crossing, None]
        reach = (
            others.speed[crossing, None] * t + 0.5 * np.maximum(accel, 0.0) * t * t
        )  # one starting off too
        decel = -others.accel[crossing]
        stop = np.where(decel > 0.5, others.speed[crossing] ** 2 / (2.0 * np.maximum(decel, 0.5)), np.inf)
        reach = np.minimum(reach, stop[:, None])
        yaw = others.yaw[crossing]
        heading = np.column_stack([np.cos(yaw), np.sin(yaw)])
        future = others.xy[crossing, None, :] + reach[:, :, None] * heading[:, None, :]  # (N, T, 2)
        gaps = np.linalg.norm(future[:, :, None, :] - path[None, None, :, :], axis=-1).min(axis=(1, 2))
        return entry if (gaps < extent.y + others.half_width[crossing] + self.clearance).any() else None


class _Others:
    """The other vehicles of the hero's world as arrays, read once a step through the CARLA API."""

    def __init__(self, hero) -> None:
        xy, yaw, speed, accel, half_length, half_width = [], [], [], [], [], []
        for actor in hero.get_world().get_actors().filter("vehicle.*"):
            if actor.id == hero.id:
                continue
            t, v, a = actor.get_transform(), actor.get_velocity(), actor.get_acceleration()
            h = math.radians(t.rotation.yaw)
            box = actor.bounding_box  # its centre may sit off the actor's origin (CARLA's vehicles)
            bx, by = box.location.x, box.location.y
            xy.append(
                (
                    t.location.x + bx * math.cos(h) - by * math.sin(h),
                    t.location.y + bx * math.sin(h) + by * math.cos(h),
                )
            )
            yaw.append(h)
            speed.append(math.hypot(v.x, v.y))
            accel.append(a.x * math.cos(h) + a.y * math.sin(h))  # along its heading
            half_length.append(box.extent.x)
            half_width.append(box.extent.y)
        self.xy = np.array(xy, float).reshape(-1, 2)  # box centres
        self.yaw, self.speed, self.accel = np.array(yaw), np.array(speed), np.array(accel)
        self.half_length, self.half_width = np.array(half_length), np.array(half_width)
        self.boxes = np.column_stack([self.xy, self.yaw, self.half_length, self.half_width]).reshape(-1, 5)
