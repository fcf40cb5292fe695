"""Background traffic on the lane graph: IDM car-following, random routes at
junctions (like CARLA's Traffic Manager), traffic lights and junction right-of-way.

State is struct-of-arrays; one compiled kernel call advances every vehicle.
"""

from __future__ import annotations

from operator import attrgetter

import numpy as np

from carla_env.embedded.kernels import DriverModel, Fleet, LaneNetwork, traffic_step_from_fields
from carla_env.maps.lane_graph import LaneGraph

PLAN = 4  # lanes of look-ahead per vehicle (current + 3)
DRIVER = DriverModel(
    accel=1.5,
    decel=3.0,
    headway=1.2,
    min_gap=2.5,
    max_decel=9.0,
    request_distance=12.0,
    merge_horizon=30.0,
    yellow_decel=4.0,
)
_DRIVER_FIELDS = tuple(DRIVER)
_fleet_fields = attrgetter(*Fleet._fields)  # a Traffic's arrays as Fleet's fields, in one C call
LATERAL_COMFORT = 2.5  # m/s^2 in curves
CONFLICT_DISTANCE = 3.0  # m: junction lanes whose centre lines come this close conflict

# Light states, as carla.TrafficLightState values.
RED, YELLOW, GREEN = 0, 1, 2


class LaneTables:
    """Per-map tables traffic needs, computed once per town."""

    def __init__(self, graph: LaneGraph) -> None:
        g = graph
        self.graph = g
        n = g.num_lanes
        # Successors restricted to the main strongly connected component: no dead ends.
        succ_lists = [[s for s in g.successors(lane) if g.lane_main[s]] for lane in range(n)]
        self.succ_ptr = np.concatenate([[0], np.cumsum([len(s) for s in succ_lists])]).astype(np.int64)
        self.succ_idx = np.array([s for lst in succ_lists for s in lst], np.int64)
        # Speed a lane can be driven at: its limit, and its tightest curve.
        curv = np.zeros(n)
        for lane in range(n):
            a, c = g.lane_start[lane], g.lane_count[lane]
            dyaw = np.abs(np.remainder(np.diff(g.yaw[a : a + c]) + np.pi, 2 * np.pi) - np.pi)
            curv[lane] = dyaw.max() / g.lane_ds[lane]
        self.curve_speed = np.sqrt(LATERAL_COMFORT / np.maximum(curv, 1e-4))
        self.speed_limit = g.lane_speed_limit.astype(np.float64)
        # In the layout the kernels take (int64/bool copies), made once rather than every tick.
        self.network = LaneNetwork(
            length=g.lane_length,
            junction=g.is_junction.copy(),
            light=g.lane_light.astype(np.int64),
            succ_ptr=self.succ_ptr,
            succ_idx=self.succ_idx,
            curve_speed=self.curve_speed,
            speed_limit=self.speed_limit,
            conflict=self._conflicts(g),
            lane_start=g.lane_start.astype(np.int64),
            lane_count=g.lane_count.astype(np.int64),
            lane_ds=g.lane_ds,
            points=g.points,
            yaw=g.yaw,
        )
        self.network_fields = tuple(self.network)

    @staticmethod
    def _conflicts(g: LaneGraph) -> np.ndarray:
        """(L, L) bool: junction lanes whose centre lines come within CONFLICT_DISTANCE."""
        conflict = np.zeros((g.num_lanes, g.num_lanes), bool)
        for jid in np.unique(g.lane_junction[g.lane_junction >= 0]):
            lanes = np.flatnonzero(g.lane_junction == jid)
            pts = [g.points[g.lane_start[lane] : g.lane_start[lane] + g.lane_count[lane]] for lane in lanes]
            for a in range(len(lanes)):
                for b in range(a + 1, len(lanes)):
                    d = np.linalg.norm(pts[a][:, None, :] - pts[b][None, :, :], axis=-1)
                    if d.min() < CONFLICT_DISTANCE:
                        conflict[lanes[a], lanes[b]] = conflict[lanes[b], lanes[a]] = True
        return conflict

    def random_successor(self, lanes: np.ndarray, r: np.ndarray) -> np.ndarray:
        count = self.succ_ptr[lanes + 1] - self.succ_ptr[lanes]
        return self.succ_idx[self.succ_ptr[lanes] + np.minimum((r * count).astype(np.int64), count - 1)]


class Traffic:
    """NPC vehicles that follow lanes."""

    _ROW_FIELDS = Fleet._fields  # one array each, a row per vehicle

    def __init__(self, tables: LaneTables, rng: np.random.Generator) -> None:
        self.t = tables
        self.rng = rng
        self.plan = np.zeros((0, PLAN), np.int64)
        self.s = np.zeros(0)
        self.v = np.zeros(0)
        self.accel = np.zeros(0)
        self.half_len = np.zeros(0)
        self.speed_factor = np.zeros(0)
        self.granted = np.zeros(0, np.int64)  # junction entry lane this vehicle may cross, -1 none
        self.waited = np.zeros(0)  # s it has stood refused at its junction entry
        self.xyz = np.zeros((0, 3))
        self.yaw = np.zeros(0)

    @property
    def count(self) -> int:
        return len(self.s)

    def add(self, lanes: np.ndarray, s: np.ndarray, half_len: np.ndarray) -> None:
        n = len(lanes)
        plan = np.zeros((n, PLAN), np.int64)
        plan[:, 0] = lanes
        for k in range(1, PLAN):
            plan[:, k] = self.t.random_successor(plan[:, k - 1], self.rng.random(n))
        xyz, yaw = self.t.graph.interpolate(plan[:, 0], s)
        new = {
            "plan": plan,
            "s": np.asarray(s, float),
            "v": np.zeros(n),
            "accel": np.zeros(n),
            "half_len": np.asarray(half_len, float),
            "speed_factor": self.rng.uniform(0.75, 1.0, n),
            "granted": np.full(n, -1, np.int64),
            "waited": np.zeros(n),
            "xyz": xyz,
            "yaw": yaw,
        }
        for name in self._ROW_FIELDS:
            setattr(self, name, np.concatenate([getattr(self, name), new[name]]))

    def remove(self, index: int) -> None:
        for name in self._ROW_FIELDS:
            setattr(self, name, np.delete(getattr(self, name), index, axis=0))

    def step(
        self,
        dt: float,
        light_state: np.ndarray,
        other_lane: np.ndarray,
        other_s: np.ndarray,
        other_v: np.ndarray,
        other_half_len: np.ndarray,
        other_holds: np.ndarray | None = None,
        obstacles: np.ndarray | None = None,
    ) -> None:
        """Advance all NPCs by dt. `other_*`: road users outside this model (heroes, walkers on
        crossings) located on lanes; `other_holds`: which hold a junction lane (default: all);
        `obstacles`: (K, 7) boxes NPCs brake for on their path whatever lane they are on (heroes: x, y,
        z, yaw, half length, half width, speed along the heading)."""
        if self.count == 0:
            return
        others = (
            np.asarray(other_lane, np.int64),
            np.asarray(other_s, np.float64),
            np.asarray(other_v, np.float64),
            np.asarray(other_half_len, np.float64),
            np.ones(len(other_lane), np.bool_) if other_holds is None else np.asarray(other_holds, np.bool_),
        )  # as OtherRoadUsers' fields (read only: no copy where the type is already right)
        rand = self.rng.random(self.count)
        traffic_step_from_fields(
            dt,
            _fleet_fields(self),
            others,
            self.t.network_fields,
            _DRIVER_FIELDS,
            np.asarray(light_state, np.int64),
            rand,
            np.zeros((0, 7)) if obstacles is None else np.ascontiguousarray(obstacles, np.float64),
        )
