"""The facts of one driving step, computed once by the env and shared by the reward, the done check
and the metrics: route progress (a forward-only tracker), off-road, the step's collision and
lane-invasion events, speed and distance moved."""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass

import numpy as np

from carla_env.maps.route import Route

ROUTE_DONE_MARGIN = 2.0  # metres short of the route's end that count as having driven it
TRACK_AHEAD = 10.0  # metres of route searched ahead of the last match, on top of the distance moved


@dataclass(frozen=True)
class DrivingState:
    route_index: int  # the route point the hero is matched to
    progress: float  # metres along the route of that point; never decreases within an episode
    progress_gain: float  # metres of progress made this step (>= 0)
    route_deviation: float  # metres from the hero to the matched route point
    heading_error: float  # radians between the hero's heading and the route's there, in [0, pi]
    route_done: bool  # within ROUTE_DONE_MARGIN of the route's end
    off_road: bool  # off every driving lane, as far as the backend can tell
    collisions: int  # collision events this step
    lane_invasions: int  # lane-invasion events this step
    speed: float  # m/s, planar
    moved: float  # metres driven this step
    pedestrian_collisions: int = 0  # of this step's collision events, those with a walker


class RouteTracker:
    """Matches positions to a route, moving only forward: each update searches the route points from
    the last match to TRACK_AHEAD (plus the distance moved) metres beyond it. A route that passes
    near itself cannot make progress jump to its later part, as a whole-route nearest-point search
    does; a car that reverses or leaves the route keeps its progress and its deviation grows."""

    def __init__(self, route: Route, ahead: float = TRACK_AHEAD) -> None:
        self.route, self.ahead = route, ahead
        self.index = 0

    def update(self, xy, moved: float = 0.0) -> tuple[int, float]:
        """(route index, distance in metres) of the route point matched to xy."""
        d = self.route.distance
        end = int(np.searchsorted(d, d[self.index] + self.ahead + moved, side="right"))
        self.index, dist = self.route.nearest(xy, window=(self.index, max(end, self.index + 1)))
        return self.index, dist

    def route_yaw(self, k: int) -> float:
        """Heading of the route at point k (radians, CARLA frame), from its neighbours."""
        pts = self.route.points
        a, b = pts[max(k - 1, 0)], pts[min(k + 1, len(pts) - 1)]
        return math.atan2(b[1] - a[1], b[0] - a[0])


class DrivingStateTracker:
    """One episode's DrivingState, updated once a step from the hero and the step's sensor data."""

    def __init__(self, route: Route, sensors: dict, hero) -> None:
        self.route = RouteTracker(route)
        self.sensors = sensors  # name -> SensorConfig: which sensors are event sensors
        self._last_location = hero.get_location()

    def step(self, core, sensor_data: dict) -> DrivingState:
        hero = core.hero
        t = hero.get_transform()
        v = hero.get_velocity()
        loc = t.location
        moved = math.hypot(loc.x - self._last_location.x, loc.y - self._last_location.y)
        self._last_location = loc
        before = float(self.route.route.distance[self.route.index])
        k, deviation = self.route.update((loc.x, loc.y), moved)
        progress = float(self.route.route.distance[k])
        error = math.radians(t.rotation.yaw) - self.route.route_yaw(k)
        return DrivingState(
            route_index=k,
            progress=progress,
            progress_gain=progress - before,
            route_deviation=deviation,
            heading_error=abs((error + math.pi) % (2 * math.pi) - math.pi),
            route_done=progress >= self.route.route.length - ROUTE_DONE_MARGIN,
            off_road=is_off_road(core),
            collisions=count_events(self.sensors, sensor_data, "sensor.other.collision"),
            lane_invasions=count_events(self.sensors, sensor_data, "sensor.other.lane_invasion"),
            speed=math.hypot(v.x, v.y),
            moved=moved,
            pedestrian_collisions=count_events(
                self.sensors, sensor_data, "sensor.other.collision", other_actor="walker.*"
            ),
        )


def count_events(sensors: dict, sensor_data: dict, blueprint_id: str, other_actor: str | None = None) -> int:
    """Events this tick from the configured sensors of one type (e.g. 'sensor.other.collision');
    with `other_actor`, only those whose other actor's type id matches it (e.g. 'walker.*')."""
    events = [e for name, cfg in sensors.items() if cfg.type == blueprint_id for e in sensor_data[name][1]]
    if other_actor is not None:
        events = [
            e
            for e in events
            if e.other_actor is not None and fnmatch.fnmatch(e.other_actor.type_id, other_actor)
        ]
    return len(events)


def is_off_road(core) -> bool:
    """Whether the hero is off every driving lane."""
    return not core.on_driving_lane(core.hero)
