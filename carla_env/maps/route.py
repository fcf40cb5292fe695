"""Global route planner over the lane graph (shortest path, like CARLA's GlobalRoutePlanner)."""

from __future__ import annotations

import functools

import numpy as np
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import breadth_first_order, dijkstra

from carla_env.maps.geometry import nearest_in_window
from carla_env.maps.lane_graph import LaneGraph

LANE_CHANGE_COST = 20.0  # metres added per lane change, so the planner changes lanes only when it pays


class Route:
    """A planned route: lane sequence and its centre-line polyline with cumulative distance."""

    def __init__(self, lanes: LaneGraph, sequence: list[int], start_s: float, goal_s: float) -> None:
        self.sequence = sequence
        self.shortfall = ""  # why the planner could not give the length asked for; empty when it could
        parts, junction = [], []
        for k, lane in enumerate(sequence):
            a, c = lanes.lane_start[lane], lanes.lane_count[lane]
            pts = lanes.points[a : a + c, :2]
            s = np.arange(c) * lanes.lane_ds[lane]
            keep = np.ones(c, bool)
            if k == 0:
                keep &= s >= start_s
            if k == len(sequence) - 1:
                keep &= s <= goal_s
            parts.append(pts[keep])
            junction.append(np.full(int(keep.sum()), lanes.lane_junction[lane] >= 0))
        self.points = np.concatenate(parts) if parts else np.zeros((0, 2))
        self.junction = (
            np.concatenate(junction) if junction else np.zeros(0, bool)
        )  # per point: in a junction
        seg = np.linalg.norm(np.diff(self.points, axis=0), axis=1)
        self.distance = np.concatenate([[0.0], np.cumsum(seg)])

    @functools.cached_property
    def headings(self) -> np.ndarray:
        """Heading (radians, CARLA frame) at each point, from its neighbours."""
        d = np.gradient(self.points, axis=0) if len(self.points) > 1 else np.zeros((len(self.points), 2))
        return np.arctan2(d[:, 1], d[:, 0])

    @property
    def length(self) -> float:
        return float(self.distance[-1]) if len(self.distance) else 0.0

    def nearest(self, xy, window: tuple[int, int] | None = None) -> tuple[int, float]:
        """(index, distance in metres) of the route point nearest xy, among points [start, end) of
        `window` (default: the whole route)."""
        start, end = window or (0, len(self.points))
        if not start < min(end, len(self.points)):
            raise ValueError(f"no route point in window {window} of a {len(self.points)}-point route")
        k, d = nearest_in_window(self.points, start, end, float(xy[0]), float(xy[1]))
        return int(k), float(d)

    def progress(self, xy) -> float:
        """Distance along the route of the point nearest xy (metres), searching the whole route: a
        one-off query. Per step, carla_env.driving_state.RouteTracker follows the route forward."""
        return float(self.distance[self.nearest(xy)[0]])


def plan_route(lanes: LaneGraph, start: tuple[int, float], goal: tuple[int, float]) -> Route:
    """Shortest route from (lane, s) to (lane, s) following successors and same-direction lane changes."""
    n = lanes.num_lanes
    rows, cols, cost = [], [], []
    for lane in range(n):
        for succ in lanes.successors(lane):
            rows.append(lane), cols.append(succ), cost.append(lanes.lane_length[lane])
        for nb in (lanes.lane_left[lane], lanes.lane_right[lane]):
            if nb >= 0:
                rows.append(lane), cols.append(nb), cost.append(LANE_CHANGE_COST)
    graph = csr_matrix((cost, (rows, cols)), shape=(n, n))
    (start_lane, start_s), (goal_lane, goal_s) = start, goal
    if start_lane == goal_lane and goal_s >= start_s:
        return Route(lanes, [start_lane], start_s, goal_s)
    dist, pred = dijkstra(graph, indices=start_lane, return_predecessors=True)
    if not np.isfinite(dist[goal_lane]):
        raise ValueError(f"no route from lane {start_lane} to lane {goal_lane}")
    sequence = [goal_lane]
    while sequence[-1] != start_lane:
        sequence.append(int(pred[sequence[-1]]))
    return Route(lanes, sequence[::-1], start_s, goal_s)


def random_route(
    lanes: LaneGraph, start: tuple[int, float], length: float, rng: np.random.Generator
) -> Route:
    """A route of `length` metres from (lane, s), turning at random where lanes fork: the drive itself,
    not a shortest path to where it ends (which can be a few metres away when the drive circles a
    block). A turn that would drive a lane twice is drawn again among those that do not, so the
    route overlaps itself only where the town is too small for the length asked; it keeps to lanes
    from which the town's main network is reachable.
    Shorter only where every way on ends (a dead end), and then `shortfall` says so."""
    start_lane, start_s = start
    usable = _reaches_main(lanes)
    lane, sequence = start_lane, [start_lane]
    remaining = length - (lanes.lane_length[lane] - start_s)
    while remaining > 0:
        succ = lanes.successors(lane)
        choices = [x for x in succ if lanes.lane_main[x]] or [x for x in succ if usable[x]] or list(succ)
        if not choices:
            break
        lane = int(rng.choice(choices))
        if _leads_back(lanes, lane, sequence, remaining):  # draw again among the ways that do not
            fresh = [x for x in choices if not _leads_back(lanes, x, sequence, remaining)]
            lane = int(rng.choice(fresh)) if fresh else lane
        sequence.append(lane)
        remaining -= lanes.lane_length[lane]
    if len(sequence) == 1:
        goal_s = min(start_s + length, lanes.lane_length[lane])
    else:
        goal_s = lanes.lane_length[lane] + min(remaining, 0.0)
    route = Route(lanes, sequence, start_s, max(float(goal_s), 0.0))
    if route.length < 0.9 * length:
        road, section, lane_id = (int(v) for v in lanes.lane_key[lane])
        route.shortfall = (
            f"route_length: {route.length:.0f} m of the {length:.0f} m asked: every way on from the hero's "
            f"start ends at road {road} lane {lane_id} (a dead end); spawn elsewhere or ask for less"
        )
    return route


def _leads_back(lanes: LaneGraph, lane: int, driven: list[int], budget: float) -> bool:
    """Whether `lane`, or a lane that must follow it (no fork on the way), is one already driven
    within `budget` metres."""
    while budget > 0:
        if lane in driven:
            return True
        budget -= lanes.lane_length[lane]
        succ = lanes.successors(lane)
        if len(succ) != 1:
            return False
        lane = int(succ[0])
    return False


@functools.lru_cache(maxsize=8)
def _reaches_main(lanes: LaneGraph) -> np.ndarray:
    """(L,) bool: lanes from which a lane of the main (largest strongly connected) network is reachable."""
    n = lanes.num_lanes
    rows = np.repeat(np.arange(n), np.diff(lanes.succ_ptr))
    reverse = csr_matrix((np.ones(len(rows)), (lanes.succ_idx, rows)), shape=(n + 1, n + 1)).tolil()
    reverse[n, np.flatnonzero(lanes.lane_main)] = 1  # a virtual node with an edge to every main lane
    reached = breadth_first_order(reverse.tocsr(), n, return_predecessors=False)
    usable = np.zeros(n + 1, bool)
    usable[reached] = True
    return usable[:n]
