"""Global route planner over the lane graph (shortest path, like CARLA's GlobalRoutePlanner)."""

from __future__ import annotations

import numpy as np
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import dijkstra

from carla_env.maps.lane_graph import LaneGraph

LANE_CHANGE_COST = 20.0  # metres added per lane change, so the planner changes lanes only when it pays


class Route:
    """A planned route: lane sequence and its centre-line polyline with cumulative distance."""

    def __init__(self, lanes: LaneGraph, sequence: list[int], start_s: float, goal_s: float) -> None:
        self.sequence = sequence
        parts = []
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
        self.points = np.concatenate(parts) if parts else np.zeros((0, 2))
        seg = np.linalg.norm(np.diff(self.points, axis=0), axis=1)
        self.distance = np.concatenate([[0.0], np.cumsum(seg)])

    @property
    def length(self) -> float:
        return float(self.distance[-1]) if len(self.distance) else 0.0

    def nearest(self, xy, window: tuple[int, int] | None = None) -> tuple[int, float]:
        """(index, distance in metres) of the route point nearest xy, among points [start, end) of
        `window` (default: the whole route)."""
        start, end = window or (0, len(self.points))
        pts = self.points[start:end]
        d = np.hypot(pts[:, 0] - xy[0], pts[:, 1] - xy[1])
        k = int(np.argmin(d))
        return start + k, float(d[k])

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

