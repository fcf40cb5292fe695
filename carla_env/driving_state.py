"""The facts of one driving step, computed once by the env and shared by the reward, the done check
and the metrics: route progress (a forward-only tracker), off-road, the step's collision,
lane-invasion and red-light events, speed and distance moved."""

from __future__ import annotations

import bisect
import fnmatch
import math
from dataclasses import dataclass

import carla
import numpy as np
from numba import njit

from carla_env.maps.route import Route

ROUTE_DONE_MARGIN = 2.0  # metres short of the route's end that count as having driven it
TRACK_AHEAD = 10.0  # metres of route searched ahead of the last match, on top of the distance moved
RED_LIGHT_DISTANCE = 15.0  # m: stop lines this near are checked (the leaderboard's DISTANCE_LIGHT)
WALKER_PREDICTION_TIMES = np.linspace(0.0, 3.0, 7)  # s: a walker this soon on the path is in the way
WALKER_HORIZON = 30.0  # m of route ahead searched for walkers
WALKER_CLEARANCE = 0.8  # m from the car's side to a walker's centre that counts as on its path
VEHICLE_CLEARANCE = 0.5  # m widened at each side of the car's box swept along its path
VEHICLE_HORIZON = 40.0  # m of route ahead searched for vehicles
# s: where a moving vehicle will be this soon at its velocity is in the way too (the reward's gap; the
# autopilot, like the TM, brakes for boxes where they are). Short: a straight line leaves a curve.
VEHICLE_PREDICTION_TIMES = (0.5, 1.0)
VEHICLE_MOVING = 0.5  # m/s: slower ones are not projected
# Junction entries (the autopilot's yield rule, shared with the reward):
YIELD_PREDICTION_TIMES = np.linspace(0.0, 4.0, 9)  # s: others' positions checked against the junction path
FOLLOWER_RANGE = 30.0  # m of route behind the hero where a car in its direction follows it
LANE_HALF_WIDTH = 1.8  # m: a vehicle centre this close to the route is in its lane
COMFORT_DECEL = 2.5  # m/s^2: junction entries within this braking distance (+4 m) are checked
COMMIT_DECEL = 6.0  # m/s^2: an entry nearer than this braking distance is committed to
ENTRY_STOP_MARGIN = 1.0  # m from the front bumper to a junction's entry where a car waits
CURVE_SAMPLE = 2.5  # m between the route points whose chords' headings give its curvature ahead


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
    red_light_runs: int  # stop lines of a red light crossed this step (RedLightMonitor)
    speed: float  # m/s, planar
    moved: float  # metres driven this step
    pedestrian_collisions: int = 0  # of this step's collision events, those with a walker
    # Red stop lines the hero's front bumper crossed this step (RedLightMonitor.entered): a driver stops
    # before the line, the leaderboard's run counts only the tail.
    red_light_entries: int = 0
    # |steer - the previous step's steer| of the control the hero drove, clamped as the car applies it
    # (0 on an episode's first step: the spawn's steer is not the driver's).
    steer_change: float = 0.0
    # m/s^2 across the hero's heading: its speed times its yaw rate over the step (0 on the first step)
    lateral_accel: float = 0.0


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
        end = bisect.bisect_right(d, d[self.index] + self.ahead + moved)  # on one number: no numpy call
        self.index, dist = self.route.nearest(xy, window=(self.index, max(end, self.index + 1)))
        return self.index, dist

    def route_yaw(self, k: int) -> float:
        """Heading of the route at point k (radians, CARLA frame), from its neighbours."""
        pts = self.route.points
        a, b = pts[max(k - 1, 0)], pts[min(k + 1, len(pts) - 1)]
        return math.atan2(b[1] - a[1], b[0] - a[0])


class DrivingStateTracker:
    """One episode's DrivingState, updated once a step from the hero and the step's sensor data."""

    def __init__(self, route: Route, sensors: dict, hero, timestep: float = 0.1) -> None:
        self.route = RouteTracker(route)
        self.sensors = sensors  # name -> SensorConfig: which sensors are event sensors
        self.timestep = timestep
        self._last_location = hero.get_location()
        self.red_lights = RedLightMonitor(hero)
        self._last_steer: float | None = None
        self._last_yaw: float | None = None

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
        yaw = math.radians(t.rotation.yaw)
        error = yaw - self.route.route_yaw(k)
        runs, entries = self.red_lights.update(hero, t)
        steer = min(max(float(hero.get_control().steer), -1.0), 1.0)
        steer_change = 0.0 if self._last_steer is None else abs(steer - self._last_steer)
        self._last_steer = steer
        turned = 0.0 if self._last_yaw is None else (yaw - self._last_yaw + math.pi) % (2 * math.pi) - math.pi
        self._last_yaw = yaw
        speed = math.hypot(v.x, v.y)
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
            red_light_runs=runs,
            red_light_entries=entries,
            speed=speed,
            moved=moved,
            pedestrian_collisions=count_events(
                self.sensors, sensor_data, "sensor.other.collision", other_actor="walker.*"
            ),
            steer_change=steer_change,
            lateral_accel=speed * abs(turned) / self.timestep,
        )


def curvature_ahead(route: Route, here: float, horizon: float) -> tuple[np.ndarray, np.ndarray]:
    """The route's curvature (1/m) ahead of `here`: the heading change between consecutive chords of
    CURVE_SAMPLE metres, from `here` to `horizon` metres on, over CURVE_SAMPLE. Returns (metres from
    `here` to where each bend's first chord starts, curvature). Samples stop at the route's end: past it
    a chord has no length, and no heading."""
    s = here + np.arange(0.0, horizon + CURVE_SAMPLE, CURVE_SAMPLE)
    s = s[s <= route.length]
    if len(s) < 3:
        return np.zeros(0), np.zeros(0)
    x = np.interp(s, route.distance, route.points[:, 0])
    y = np.interp(s, route.distance, route.points[:, 1])
    heading = np.unwrap(np.arctan2(np.diff(y), np.diff(x)))
    return s[:-2] - here, np.abs(np.diff(heading)) / CURVE_SAMPLE


def walker_gap(
    walker_xy: np.ndarray,
    walker_velocity: np.ndarray,
    route: Route,
    here: float,
    half_width: float,
    clearance: float = WALKER_CLEARANCE,
    horizon: float = WALKER_HORIZON,
) -> float | None:
    """Distance along the route from `here` to the nearest pedestrian on the car's path within
    `horizon` metres, now or at its velocity within WALKER_PREDICTION_TIMES (one crossing towards the
    path counts); None if none. On the path: within the car's `half_width` + `clearance` of the route.
    Walkers as (N, 2+) arrays of position and velocity (a Scene's, or read through the CARLA API)."""
    if len(walker_xy) != len(walker_velocity):
        raise ValueError(
            f"walker_gap: {len(walker_xy)} walker positions but {len(walker_velocity)} velocities"
        )
    d = route.distance
    first = bisect.bisect_right(d, here)  # on one number: no numpy call
    last = bisect.bisect_left(d, here + horizon)
    if not len(walker_xy) or last <= first:
        return None
    gap = _nearest_on_path(
        np.ascontiguousarray(walker_xy[:, :2], np.float64),
        np.ascontiguousarray(walker_velocity[:, :2], np.float64),
        route.points[first:last],
        d[first:last],
        WALKER_PREDICTION_TIMES,
        half_width + clearance,
    )
    return None if gap == np.inf else gap - here


@njit(cache=True)
def _nearest_on_path(xy, velocity, points, distance, times, radius):
    """The least route distance of a route point within `radius` of a walker at one of `times`."""
    lo_x, lo_y = points[:, 0].min(), points[:, 1].min()
    hi_x, hi_y = points[:, 0].max(), points[:, 1].max()
    r2 = radius * radius
    best = np.inf
    for w in range(len(xy)):
        for t in times:
            x, y = xy[w, 0] + velocity[w, 0] * t, xy[w, 1] + velocity[w, 1] * t
            if x < lo_x - radius or x > hi_x + radius or y < lo_y - radius or y > hi_y + radius:
                continue
            for j in range(len(points)):
                if distance[j] >= best:
                    break
                dx, dy = points[j, 0] - x, points[j, 1] - y
                if dx * dx + dy * dy < r2:
                    best = distance[j]
                    break
    return best


def vehicle_gap(
    route: Route,
    here: float,
    ego,
    others: np.ndarray,
    clearance: float = VEHICLE_CLEARANCE,
    horizon: float = VEHICLE_HORIZON,
    velocities: np.ndarray | None = None,
) -> float | None:
    """How far the car may drive along the route from `here` before its box meets another vehicle's:
    the least distance to a route point where the car's box, on the centre line and heading along it,
    `clearance` wider at each side, overlaps the box of a vehicle in front of it (centre ahead of the
    car's), within `horizon` metres; None if none does. Boxes, not centres: a car stopped half across
    the path (on a sibling junction lane the route has just turned away from, or crossing it at an
    angle) blocks it though its centre is metres off the centre line. `ego` is (x, y, yaw in radians,
    half length, half width); `others` an (N, 5) array of boxes the same way (a Scene's vehicles).
    With `velocities` ((N, 2) vx, vy), each moving vehicle's box also counts where it will be at each of
    VEHICLE_PREDICTION_TIMES: one turning across the path is in the way before it is on it."""
    d = route.distance
    first, last = bisect.bisect_left(d, here), bisect.bisect_left(d, here + horizon)
    if last <= first or not len(others):
        return None
    x, y, yaw, half_length, half_width = (float(v) for v in ego)
    # One behind (a follower on its tail) is not in its way, as for the TM.
    boxes = np.ascontiguousarray(others, np.float64)
    if velocities is not None:
        if len(velocities) != len(others):
            raise ValueError(f"vehicle_gap: {len(others)} boxes but {len(velocities)} velocities")
        boxes = _with_predicted(boxes, np.ascontiguousarray(velocities[:, :2], np.float64), x, y, yaw)
    ahead = _boxes_ahead(boxes, x, y, yaw)
    hit = first_box_overlap(
        route.points[first:last], route.headings[first:last], half_length, half_width + clearance, ahead
    )
    return float(d[first + hit] - here) if hit >= 0 else None


@njit(cache=True)
def first_box_overlap(points, headings, half_length, half_width, boxes):
    """Index of the first of P poses (points (P, 2), headings (P,)) where a box of `half_length` x
    `half_width` overlaps one of `boxes` ((N, 5): x, y, yaw, half length, half width); -1 if none. The
    separating axis test of two rectangles in the ground plane, after a circle test that skips the far."""
    n = boxes.shape[0]
    c2s, s2s, radius = np.cos(boxes[:, 2]), np.sin(boxes[:, 2]), np.hypot(boxes[:, 3], boxes[:, 4])
    own = np.hypot(half_length, half_width)
    for j in range(points.shape[0]):
        c1, s1 = np.cos(headings[j]), np.sin(headings[j])
        for i in range(n):
            dx, dy = boxes[i, 0] - points[j, 0], boxes[i, 1] - points[j, 1]
            reach = own + radius[i]
            if dx * dx + dy * dy > reach * reach:
                continue
            c2, s2 = c2s[i], s2s[i]
            cos_d, sin_d = abs(c1 * c2 + s1 * s2), abs(s2 * c1 - c2 * s1)
            a2, b2 = boxes[i, 3], boxes[i, 4]
            if abs(dx * c1 + dy * s1) > half_length + a2 * cos_d + b2 * sin_d:
                continue
            if abs(dy * c1 - dx * s1) > half_width + a2 * sin_d + b2 * cos_d:
                continue
            if abs(dx * c2 + dy * s2) > a2 + half_length * cos_d + half_width * sin_d:
                continue
            if abs(dy * c2 - dx * s2) > b2 + half_length * sin_d + half_width * cos_d:
                continue
            return j
    return -1


@njit(cache=True)
def _with_predicted(boxes, velocities, x, y, yaw):
    """`boxes`, then a copy of each moving one's box in front of (x, y) heading `yaw` moved along its
    velocity by each of VEHICLE_PREDICTION_TIMES (a copy whose centre passes behind the car is then
    dropped by _boxes_ahead: an oncoming car going by is not in the way)."""
    c, s = np.cos(yaw), np.sin(yaw)
    times = VEHICLE_PREDICTION_TIMES
    out = np.empty((boxes.shape[0] * (1 + len(times)), 5))
    out[: boxes.shape[0]] = boxes
    n = boxes.shape[0]
    for i in range(boxes.shape[0]):
        vx, vy = velocities[i, 0], velocities[i, 1]
        if vx * vx + vy * vy < VEHICLE_MOVING * VEHICLE_MOVING:
            continue
        if (boxes[i, 0] - x) * c + (boxes[i, 1] - y) * s <= 0.0:
            continue
        for t in times:
            out[n] = boxes[i]
            out[n, 0] += vx * t
            out[n, 1] += vy * t
            n += 1
    return out[:n]


@njit(cache=True)
def _boxes_ahead(boxes, x, y, yaw):
    """The boxes whose centre is in front of (x, y) heading `yaw`."""
    c, s = np.cos(yaw), np.sin(yaw)
    keep = np.zeros(boxes.shape[0], np.bool_)
    for i in range(boxes.shape[0]):
        keep[i] = (boxes[i, 0] - x) * c + (boxes[i, 1] - y) * s > 0.0
    return boxes[keep]


@dataclass
class OtherVehicles:
    """The hero's world's other vehicles as arrays: box centres (N, 2), heading (rad), speed, acceleration
    along the heading, half length, half width."""

    xy: np.ndarray
    yaw: np.ndarray
    speed: np.ndarray
    accel: np.ndarray
    half_length: np.ndarray
    half_width: np.ndarray

    @property
    def boxes(self) -> np.ndarray:
        """(N, 5) x, y, yaw, half length, half width: a Scene's vehicles."""
        return np.column_stack([self.xy, self.yaw, self.half_length, self.half_width]).reshape(-1, 5)

    @classmethod
    def from_world(cls, hero) -> OtherVehicles:
        """Read once a step through the CARLA API (either backend)."""
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
        return cls(
            np.array(xy, float).reshape(-1, 2),
            np.array(yaw, float),
            np.array(speed, float),
            np.array(accel, float),
            np.array(half_length, float),
            np.array(half_width, float),
        )

    @classmethod
    def from_scene(cls, scene) -> OtherVehicles:
        """From a birdview Scene's boxes and velocities (the reward's: no API calls); no acceleration."""
        b, v = scene.vehicles, scene.vehicle_velocities
        if len(v) != len(b):
            raise ValueError(f"OtherVehicles.from_scene: {len(b)} vehicles but {len(v)} velocities")
        speed = np.hypot(v[:, 0], v[:, 1])
        return cls(b[:, :2], b[:, 2], speed, np.zeros(len(b)), b[:, 3], b[:, 4])


def junction_entry_to_yield_at(
    route: Route,
    index: int,
    speed: float,
    half_length: float,
    half_width: float,
    others: OtherVehicles,
    lane_half_width: float = LANE_HALF_WIDTH,
    clearance: float = VEHICLE_CLEARANCE,
    comfort_decel: float = COMFORT_DECEL,
    max_decel: float = COMMIT_DECEL,
    may_commit: bool = True,
) -> float | None:
    """Where along the route a car at route point `index` must wait (the next junction's entry), or
    None to drive on: the autopilot's rule, and the reward's yield penalty.

    It waits while another vehicle is on its path through the junction (and the car length after
    it, where turning traffic merges), or will be within 4 s at its speed and acceleration (up to
    where it stops, if it is braking). Vehicles on the route in the car's direction are leaders or
    followers, not crossing traffic. Inside a junction, moving with its front past the entry, or (with
    `may_commit`) too near to stop before it, the car has committed: braking there would leave it on
    the crossing path."""
    if route.junction[index] or not len(others.xy):
        return None
    ahead = np.flatnonzero(route.junction[index:])
    if not len(ahead):
        return None
    first = index + int(ahead[0])
    entry, here = float(route.distance[first]), float(route.distance[index])
    front_to_entry = entry - here - half_length
    room = front_to_entry - ENTRY_STOP_MARGIN  # to the stop point
    # Committed: too near to stop before the junction (the front bumper at its entry). One that
    # crept past its stop point while waiting can still stop short of the junction, and waits.
    if room > speed * speed / (2.0 * comfort_decel) + 4.0:
        return None
    if may_commit and front_to_entry < speed * speed / (2.0 * max_decel):
        return None
    # Moving with its front past the entry: stopping there blocks the way.
    if front_to_entry < 0.0 < speed:
        return None
    after = np.flatnonzero(~route.junction[first:])
    leave = float(route.distance[first + int(after[0])]) if len(after) else route.length
    dist = route.distance  # increasing: each stretch below is one slice
    end = bisect.bisect_right(dist, leave + 2.0 * half_length)
    path = route.points[bisect.bisect_left(dist, entry) : end]
    # Others on the route in its direction are leaders and followers, which the leader gap handles:
    # on the stretch from FOLLOWER_RANGE behind the car to the path's end, not on a later pass of
    # a route that comes back through this junction.
    near = slice(bisect.bisect_left(dist, here - FOLLOWER_RANGE), end)
    pts, yaws = route.points[near], route.headings[near]
    d = np.hypot(pts[None, :, 0] - others.xy[:, None, 0], pts[None, :, 1] - others.xy[:, None, 1])
    nearest = d.argmin(axis=1)
    turn = np.remainder(others.yaw - yaws[nearest] + np.pi, 2 * np.pi) - np.pi
    on_route = d[np.arange(len(nearest)), nearest] < lane_half_width
    crossing = ~(on_route & (np.abs(turn) < np.pi / 4))
    if not crossing.any():
        return None
    t, accel = YIELD_PREDICTION_TIMES[None, :], others.accel[crossing, None]
    reach = others.speed[crossing, None] * t + 0.5 * np.maximum(accel, 0.0) * t * t  # one starting off too
    decel = -others.accel[crossing]
    stop = np.where(decel > 0.5, others.speed[crossing] ** 2 / (2.0 * np.maximum(decel, 0.5)), np.inf)
    reach = np.minimum(reach, stop[:, None])
    xy, near_enough = others.xy[crossing], half_width + others.half_width[crossing] + clearance
    # Only those that can get near enough within their reach (the triangle inequality: exact).
    now = np.hypot(xy[:, None, 0] - path[None, :, 0], xy[:, None, 1] - path[None, :, 1]).min(
        axis=1, initial=np.inf
    )
    can = now - reach[:, -1] < near_enough + 1e-6
    if not can.any():
        return None
    yaw = others.yaw[crossing][can]
    heading = np.column_stack([np.cos(yaw), np.sin(yaw)])
    future = xy[can, None, :] + reach[can, :, None] * heading[:, None, :]  # (N, T, 2)
    gaps = np.linalg.norm(future[:, :, None, :] - path[None, None, :, :], axis=-1).min(axis=(1, 2))
    return entry if (gaps < near_enough[can]).any() else None


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


class RedLightMonitor:
    """Red-light runs as the CARLA leaderboard counts them (scenario_runner's RunningRedLightTest): a run
    is the segment behind the car's centre (0.8 to 1 + its half length back) crossing the stop line of
    a red light, 1.2 lane widths across the lane at its stop waypoint, while the map's waypoint at the
    segment's far end is on that lane and the car heads along it; a light counts once until another
    is run. Stop lines come from `TrafficLight.get_stop_waypoints()`, on either backend; a light is
    checked when its stop line is within RED_LIGHT_DISTANCE (the leaderboard measures to the light's
    trigger volume, which sits at the stop line)."""

    def __init__(self, hero) -> None:
        self.map = hero.get_world().get_map()
        self.lights, ends, keys, forward = [], [], [], []
        for light in hero.get_world().get_actors().filter("traffic.traffic_light"):
            for wp in light.get_stop_waypoints():
                t = wp.transform
                yaw = math.radians(t.rotation.yaw)
                across = 0.6 * wp.lane_width * np.array([-math.sin(yaw), math.cos(yaw)])
                centre = np.array([t.location.x, t.location.y])
                self.lights.append(light)
                ends.append((centre - across, centre + across))
                keys.append((wp.road_id, wp.lane_id))
                forward.append((math.cos(yaw), math.sin(yaw)))
        self.ends = np.array(ends, float).reshape(-1, 2, 2)
        self.centres = self.ends.mean(axis=1)
        self.keys, self.forward = keys, np.array(forward, float).reshape(-1, 2)
        self._last_run = None  # the light run last: not counted again until another is
        (x, y), (hx, hy) = _position_heading(hero.get_transform())
        extent = hero.bounding_box.extent.x
        self._last_front = (x + extent * hx, y + extent * hy)  # update() checks the move from here

    def _red_line_crossed(self, a, b, heading, near, lane_point, z: float, skip=None) -> int | None:
        """The stop line of a red light (not `skip`) within RED_LIGHT_DISTANCE of `near` that segment ab
        crosses heading along its lane, with `lane_point` on that lane (the line's ends reach 0.1 lane
        widths into the neighbouring lanes); None if none."""
        if not len(self.ends):
            return None
        lane = None
        # The geometry first, compiled: a line is seldom crossed, and a light's state is a backend call.
        crossed = _lines_crossed(
            self.centres, self.ends, self.forward, near, a, b, heading, RED_LIGHT_DISTANCE
        )
        for k in crossed.tolist():
            light = self.lights[k]
            if light is skip or light.get_state() != carla.TrafficLightState.Red:
                continue
            if lane is None:
                lane = self.map.get_waypoint(carla.Location(float(lane_point[0]), float(lane_point[1]), z))
            if lane is not None and (lane.road_id, lane.lane_id) == self.keys[k]:
                return k
        return None

    def update(self, hero, transform: carla.Transform) -> tuple[int, int]:
        """(runs, entries) of this step, each 0 or 1.

        A run: the hero's tail crossed a red light's stop line at `transform` (the leaderboard's).
        An entry: the front bumper's centre crossed a red light's stop line since the last call, from
        that light's lane and heading along it. A car that stops with its front in the junction is no
        leaderboard run while its tail is behind the line, yet it entered on red. Standing still
        crosses nothing: a car caught in the junction by the red is not counted."""
        (x, y), (hx, hy) = _position_heading(transform)  # floats: numpy on 2-vectors costs more
        extent, z = hero.bounding_box.extent.x, transform.location.z
        heading, centre = (hx, hy), (x, y)
        close, far = 0.8 * extent, extent + 1.0
        tail_close, tail_far = (x - close * hx, y - close * hy), (x - far * hx, y - far * hy)
        run = self._red_line_crossed(tail_close, tail_far, heading, centre, tail_far, z, skip=self._last_run)
        if run is not None:
            self._last_run = self.lights[run]
        front = (x + extent * hx, y + extent * hy)
        last, self._last_front = self._last_front, front
        entered = self._red_line_crossed(last, front, heading, front, last, z)
        return int(run is not None), int(entered is not None)


def _position_heading(transform: carla.Transform) -> tuple[tuple[float, float], tuple[float, float]]:
    """(x, y) and the unit heading of a transform, in the ground plane."""
    yaw = math.radians(transform.rotation.yaw)
    return (transform.location.x, transform.location.y), (math.cos(yaw), math.sin(yaw))


@njit(cache=True)
def _lines_crossed(centres, ends, forward, near, a, b, heading, distance: float) -> np.ndarray:
    """Indices, in order, of the lines (centre within `distance` of `near`) that segment ab crosses
    heading along their forward direction."""
    out = np.empty(len(centres), np.int64)
    n = 0
    for k in range(len(centres)):
        if np.hypot(centres[k, 0] - near[0], centres[k, 1] - near[1]) > distance:
            continue
        if heading[0] * forward[k, 0] + heading[1] * forward[k, 1] <= 0:
            continue
        if _segments_cross(a, b, ends[k, 0], ends[k, 1]):
            out[n] = k
            n += 1
    return out[:n]


@njit(cache=True)
def _segments_cross(a, b, c, d) -> bool:
    """Whether the segments ab and cd intersect (touching counts, as shapely's intersection does)."""
    d1, d2, d3, d4 = _side(c, d, a), _side(c, d, b), _side(a, b, c), _side(a, b, d)
    return d1 * d2 <= 0 and d3 * d4 <= 0


@njit(cache=True, inline="always")
def _side(p, q, r) -> float:
    return (q[0] - p[0]) * (r[1] - p[1]) - (q[1] - p[1]) * (r[0] - p[0])
