"""Pedestrians of the embedded world, after CARLA's walker AI (LibCarla/source/carla/nav):

- a started controller walks its walker to the location given by `go_to_location`, along sidewalks and
  crossings (the walk graph of carla_env.maps.sidewalks, standing in for CARLA's navigation mesh);
- at its destination it takes a new route to a random location (WalkerManager::SetWalkerNextPoint);
- before a crossing it stops and checks for vehicles, and after 5 s of waiting takes a new route
  (WalkerEventStopAndCheck(5));
- a route may cross roads anywhere (mid-block) with the probability set by
  `world.set_pedestrians_cross_factor` (Navigation::SetPedestriansCrossFactor; CARLA's default 0);
- traffic lights are not part of a walker's decision (CARLA's walker AI reads none).

State is struct-of-arrays; one compiled kernel call a tick moves every walker.
"""

from __future__ import annotations

import numpy as np

from carla_env.embedded.kernels import (
    CHECKING,
    IDLE,
    STEERED,
    WALKING,
    WalkerState,
    WalkNetwork,
    walkers_tick_from_fields,
)
from carla_env.maps.sidewalks import WalkGraph

DEFAULT_MAX_SPEED = 1.4  # m/s until set_max_speed (a brisk walk)
MAX_CROSSING_ROWS = 8  # driving lanes one crossing can span, per walker, for traffic to yield to


class WalkerCrowd:
    """The world's walkers: rows of WalkerState, their routes, and the walk graph they use."""

    def __init__(self, graph: WalkGraph, rng: np.random.Generator) -> None:
        self.graph = graph
        self.rng = rng
        self.cross_factor = 0.0
        self.net = WalkNetwork(
            graph.node_xyz,
            graph.adj_ptr,
            graph.adj_node,
            graph.adj_edge,
            graph.edge_kind,
            graph.cross_ptr,
            graph.cross_lane,
            graph.cross_s,
            graph.cross_at,
            graph.edge_a,
        )
        self._components = {roads: graph.components(roads) for roads in (False, True)}
        self._destinations = graph.destinations()
        # Rows live in buffers with room to spare (grown by doubling, so adding walkers one by one copies
        # each row a bounded number of times); state, half and next_hop are views of the first `count`.
        self._state_rows, self._half_rows, self._next_hop_rows = _blank_rows(0, graph.num_nodes)
        self._show(0)
        self._out_lane = np.zeros(0, np.int64)
        self._out_s = np.zeros(0)
        self.in_the_way = (self._out_lane, self._out_s)  # (lane, s) of walkers on crossings
        self.steered = 0  # walkers moved by WalkerControl (rare: looked up on the lanes one by one)

    @property
    def count(self) -> int:
        return len(self.state.v)

    # ------------------------------------------------------------------ rows
    def nearest_node(self, xyz) -> int:
        return self.graph.nearest_node(xyz)

    def add(self, xyz, half) -> int:
        """A walker standing at `xyz` (ground level); routes start from its nearest walk-graph node, which
        it first walks to in a straight line (CARLA projects a spawn onto its navigation mesh)."""
        node = self.nearest_node(xyz)
        row = self.count
        if row == len(self._state_rows.v):
            self._grow(max(16, 2 * row))
        self._show(row + 1)
        s = self.state
        s.xyz[row] = xyz
        s.yaw[row] = s.v[row] = s.wait[row] = s.steer_speed[row] = 0.0
        s.max_speed[row] = DEFAULT_MAX_SPEED
        s.node_from[row] = s.node_to[row] = node
        s.edge[row] = s.goal[row] = -1
        s.mode[row] = IDLE
        s.steer_dir[row] = 0.0
        s.reroute[row] = False
        self.half[row] = half
        self.next_hop[row] = -1
        self._out_lane = np.zeros(MAX_CROSSING_ROWS * self.count, np.int64)
        self._out_s = np.zeros(MAX_CROSSING_ROWS * self.count)
        return row

    def remove(self, row: int) -> None:
        n = self.count
        for rows in (*self._state_rows, self._half_rows, self._next_hop_rows):
            rows[row : n - 1] = rows[row + 1 : n]
        self._show(n - 1)
        self._count_steered()

    def _grow(self, capacity: int) -> None:
        state, half, next_hop = _blank_rows(capacity, self.graph.num_nodes)
        for new, old in zip((*state, half, next_hop), (*self.state, self.half, self.next_hop), strict=True):
            new[: len(old)] = old
        self._state_rows, self._half_rows, self._next_hop_rows = state, half, next_hop

    def _show(self, count: int) -> None:
        """Point state, half and next_hop at the first `count` rows of the buffers."""
        self.state = WalkerState(*(rows[:count] for rows in self._state_rows))
        self.half = self._half_rows[:count]
        self.next_hop = self._next_hop_rows[:count]

    # ------------------------------------------------------------------ the controller's verbs
    def start(self, row: int) -> None:
        s = self.state
        if s.mode[row] == STEERED:  # off the graph: its route starts at the nearest node, walked to
            node = self.nearest_node(s.xyz[row])
            s.node_from[row] = s.node_to[row] = node
            s.edge[row] = -1
        s.mode[row] = WALKING if s.goal[row] >= 0 else IDLE
        self._count_steered()

    def stop(self, row: int) -> None:
        s = self.state
        s.mode[row], s.goal[row], s.v[row] = IDLE, -1, 0.0
        self._count_steered()

    def go_to(self, row: int, xyz) -> None:
        """Route to the node nearest `xyz` that the walker can reach."""
        roads = bool(self.rng.random() < self.cross_factor)
        node = self.graph.nearest_node(xyz, reachable_from=int(self.state.node_to[row]), roads=roads)
        self._route(row, node, roads)

    def random_node(self) -> int:
        return int(self.rng.integers(self.graph.num_nodes))

    def steer(self, row: int, direction, speed: float) -> None:
        """carla.WalkerControl on a walker no controller drives."""
        s = self.state
        d = np.array([direction.x, direction.y, 0.0])
        norm = np.linalg.norm(d)
        s.steer_dir[row] = d / norm if norm > 0 else 0.0
        s.steer_speed[row] = max(float(speed), 0.0)
        s.mode[row] = STEERED
        self._count_steered()

    def _count_steered(self) -> None:
        self.steered = int((self.state.mode == STEERED).sum())

    def _route(self, row: int, goal: int, roads: bool) -> None:
        s = self.state
        self.next_hop[row] = self.graph.next_hops(goal, roads)
        s.goal[row] = goal
        s.node_to[row] = s.node_from[row]  # from where it stands (a node): re-planned next tick
        s.edge[row] = -1
        s.wait[row] = 0.0
        s.mode[row] = WALKING
        self._count_steered()

    def _new_random_route(self, row: int) -> None:
        roads = bool(self.rng.random() < self.cross_factor)
        comp = self._components[roads]
        here = self.state.node_from[row]
        choices = self._destinations[comp[self._destinations] == comp[here]]
        if not len(choices):  # an island with no destination: anywhere on it
            choices = np.flatnonzero(comp == comp[here])
        goal = int(choices[self.rng.integers(len(choices))])
        if goal == here and len(choices) > 1:
            goal = int(choices[(np.searchsorted(choices, here) + 1) % len(choices)])
        self._route(row, goal, roads)

    # ------------------------------------------------------------------ the tick
    def step(self, dt: float, veh_xyz, veh_yaw, veh_half, veh_v) -> tuple[np.ndarray, np.ndarray]:
        """Move every walker; `in_the_way` becomes (lane, s) of the walkers on crossings, for traffic to
        yield to. Returns the (vehicle, walker) index pairs in contact after the move."""
        n, vi, wj = walkers_tick_from_fields(
            dt,
            tuple(self.state),
            self.half,
            tuple(self.net),
            veh_xyz,
            veh_yaw,
            veh_half,
            veh_v,
            self.next_hop,
            self._out_lane,
            self._out_s,
        )
        self.in_the_way = (self._out_lane[:n].copy(), self._out_s[:n].copy())
        if self.state.reroute.any():
            for row in np.flatnonzero(self.state.reroute).tolist():
                if self.state.mode[row] == CHECKING:  # timed out: it stands at the node it came from
                    self.state.node_to[row] = self.state.node_from[row]
                self._new_random_route(row)
        return vi, wj


def _blank_rows(capacity: int, num_nodes: int) -> tuple[WalkerState, np.ndarray, np.ndarray]:
    """Buffers for `capacity` walkers: their state, half extents and next-hop tables."""
    n = capacity
    state = WalkerState(
        xyz=np.zeros((n, 3)),
        yaw=np.zeros(n),
        v=np.zeros(n),
        max_speed=np.zeros(n),
        node_from=np.zeros(n, np.int64),
        node_to=np.zeros(n, np.int64),
        edge=np.zeros(n, np.int64),
        goal=np.zeros(n, np.int64),
        mode=np.zeros(n, np.int64),
        wait=np.zeros(n),
        steer_dir=np.zeros((n, 3)),
        steer_speed=np.zeros(n),
        reroute=np.zeros(n, bool),
    )
    return state, np.zeros((n, 3)), np.full((n, num_nodes), -1, np.int32)
