"""Lane graph: the driving lanes of a `carla.Map` as numpy arrays.

One lane = one CARLA topology segment (road, section, lane). Centre lines are
resampled uniformly along their length, in CARLA's frame (left-handed: x
forward/east, y to the right/south, yaw clockwise-positive in degrees in the
API, radians here). Traffic, spawning, routing and the BEV raster all read this.
"""

from __future__ import annotations

import hashlib
import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass, fields
from pathlib import Path

import carla
import numpy as np
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components

from carla_env.maps.geometry import nearest_point

GRAPH_VERSION = 3  # bump when the arrays below change meaning
DEFAULT_SPEED_MS = 30.0 / 3.6  # CARLA's town default
_SPEED_UNITS = {"km/h": 1 / 3.6, "mph": 0.44704, "m/s": 1.0}
TRAFFIC_LIGHT_TYPE = "1000001"

# Marking types as small ints (carla.LaneMarkingType values).
MARKING = {name: int(v) for name, v in carla.LaneMarkingType.names.items()}


@dataclass(frozen=True, eq=False)
class LaneGraph:
    # --- per lane (L) ---
    lane_key: np.ndarray  # (L, 3) int32: road_id, section_id, lane_id
    lane_start: np.ndarray  # (L,) int32 first point index
    lane_count: np.ndarray  # (L,) int32 points (>= 2)
    lane_length: np.ndarray  # (L,) float64 metres
    lane_ds: np.ndarray  # (L,) float64 spacing between points
    lane_junction: np.ndarray  # (L,) int32 junction id, -1 outside junctions
    lane_speed_limit: np.ndarray  # (L,) float32 m/s
    lane_width: np.ndarray  # (L,) float32 metres
    succ_ptr: np.ndarray  # CSR successors: succ_idx[succ_ptr[l]:succ_ptr[l+1]]
    succ_idx: np.ndarray
    lane_left: np.ndarray  # (L,) int32 same-direction neighbour, -1 if none
    lane_right: np.ndarray
    lane_light: np.ndarray  # (L,) int32 light that guards this lane's end, -1 if none
    lane_main: np.ndarray  # (L,) bool: in the largest strongly connected component
    # --- per point (P) ---
    points: np.ndarray  # (P, 3) float64 x, y, z
    yaw: np.ndarray  # (P,) float64 radians
    point_lane: np.ndarray  # (P,) int32
    mark_left: np.ndarray  # (P,) int8 marking type on the lane's left edge (driving direction)
    mark_right: np.ndarray  # (P,) int8
    # --- per traffic light (T) ---
    light_id: np.ndarray  # (T,) int64 OpenDRIVE signal id
    light_location: np.ndarray  # (T, 3) pole position
    light_junction: np.ndarray  # (T,) int32 junction index the light guards
    light_phase: np.ndarray  # (T,) int32 phase within its junction (one phase green at a time)
    light_phases: np.ndarray  # (T,) int32 number of phases of its junction
    xodr_hash: str = ""

    # ---------------------------------------------------------------- queries
    @property
    def num_lanes(self) -> int:
        return len(self.lane_start)

    @property
    def is_junction(self) -> np.ndarray:
        return self.lane_junction >= 0

    def successors(self, lane: int) -> np.ndarray:
        return self.succ_idx[self.succ_ptr[lane] : self.succ_ptr[lane + 1]]

    def interpolate(self, lane: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Positions (N, 3) and yaws (N,) at distance s along lanes (vectorised)."""
        ds = self.lane_ds[lane]
        u = np.clip(s, 0.0, self.lane_length[lane]) / ds
        seg = np.minimum(u.astype(np.int64), self.lane_count[lane] - 2)
        frac = u - seg
        i0 = self.lane_start[lane] + seg
        p0 = self.points[i0]
        p = p0 + (self.points[i0 + 1] - p0) * frac[:, None]
        y0 = self.yaw[i0]
        dy = np.remainder(self.yaw[i0 + 1] - y0 + np.pi, 2 * np.pi) - np.pi
        return p, y0 + dy * frac

    @property
    def grid(self) -> tuple:
        """Spatial hash of lane points (origin, cell, shape, cell_ptr, cell_pts) for nearest-point lookups."""
        grid = self.__dict__.get("_grid")
        if grid is None:
            cell = 4.0
            origin = self.points[:, :2].min(axis=0) - cell
            cells = ((self.points[:, :2] - origin) // cell).astype(np.int64)
            shape = cells.max(axis=0) + 2
            flat = cells[:, 0] * shape[1] + cells[:, 1]
            order = np.argsort(flat, kind="stable")
            ptr = np.searchsorted(flat[order], np.arange(shape[0] * shape[1] + 1))
            grid = (origin, cell, shape, ptr.astype(np.int64), order.astype(np.int64))
            object.__setattr__(self, "_grid", grid)
        return grid

    def nearest(self, xyz, yaw: float | None = None, max_dist: float = 60.0) -> tuple[int, float]:
        """Index of the lane point best matching a position (and heading), and its planar distance."""
        origin, cell, shape, ptr, pts = self.grid
        return nearest_point(
            float(xyz[0]),
            float(xyz[1]),
            float(xyz[2]),
            0.0 if yaw is None else float(yaw),
            yaw is not None,
            origin,
            cell,
            shape,
            ptr,
            pts,
            self.points,
            self.yaw,
            int(max_dist / cell) + 1,
        )  # rings searched before a full scan

    def locate(self, xyz, yaw: float | None = None) -> tuple[int, float, float]:
        """(lane, s, planar distance) of the lane point nearest a position, matching a heading if given."""
        p, dist = self.nearest(xyz, yaw)
        lane = int(self.point_lane[p])
        return lane, float((p - self.lane_start[lane]) * self.lane_ds[lane]), float(dist)

    # ------------------------------------------------------------ persistence
    def save(self, path: Path) -> None:
        arrays = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "xodr_hash"}
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, xodr_hash=np.array(self.xodr_hash), **arrays)
        os.replace(tmp, path)  # atomic: a crash never leaves a half-written cache

    @classmethod
    def load(cls, path: Path) -> LaneGraph:
        with np.load(path) as data:
            kwargs = {f.name: data[f.name] for f in fields(cls)}
        kwargs["xodr_hash"] = str(kwargs["xodr_hash"])
        return cls(**kwargs)


def xodr_hash(xodr: str) -> str:
    return hashlib.sha1(f"{GRAPH_VERSION}:{xodr}".encode()).hexdigest()[:16]


def cache_dir() -> Path:
    root = os.environ.get("CARLA_ENV_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "carla_env"
    )
    return Path(root)


def build_lane_graph(
    carla_map: carla.Map, xodr: str, resolution: float = 1.0, use_cache: bool = True
) -> LaneGraph:
    """Build (or load from the on-disk cache, keyed by the xodr hash) the lane graph of a map."""
    key = xodr_hash(xodr + f"@{resolution}")
    path = cache_dir() / f"lanes-{key}.npz"
    if use_cache and path.exists():
        try:
            return LaneGraph.load(path)
        except (OSError, KeyError, ValueError):
            path.unlink(missing_ok=True)  # stale or corrupt: rebuild
    graph = _build(carla_map, xodr, resolution, key)
    if use_cache:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            graph.save(path)
        except OSError:
            pass  # a read-only cache only costs a rebuild
    return graph


def _wkey(w: carla.Waypoint) -> tuple[int, int, int]:
    return (w.road_id, w.section_id, w.lane_id)


def _resample(xyz: np.ndarray, yaw: np.ndarray, marks: np.ndarray, resolution: float):
    seg = np.linalg.norm(np.diff(xyz, axis=0), axis=1)
    keep = np.concatenate([[True], seg > 1e-3])
    xyz, yaw, marks = xyz[keep], yaw[keep], marks[keep]
    if len(xyz) < 2:  # degenerate lane (a few mm): extend along its heading
        xyz = np.vstack([xyz[:1], xyz[:1] + [np.cos(yaw[0]) * 1e-2, np.sin(yaw[0]) * 1e-2, 0.0]])
        yaw = np.repeat(yaw[:1], 2)
        marks = np.repeat(marks[:1], 2, axis=0)
    s = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(xyz, axis=0), axis=1))])
    length = float(s[-1])
    n = max(2, int(np.ceil(length / resolution)) + 1)
    s_new = np.linspace(0.0, length, n)
    out = np.column_stack([np.interp(s_new, s, xyz[:, i]) for i in range(3)])
    yaw_u = np.unwrap(yaw)
    yaw_new = np.interp(s_new, s, yaw_u)
    idx = np.clip(np.searchsorted(s, s_new, side="right") - 1, 0, len(s) - 1)
    return out, yaw_new, marks[idx], length, length / (n - 1)


def _road_speeds(root: ET.Element) -> dict[int, float]:
    speeds = {}
    for road in root.iter("road"):
        speed = road.find("type/speed")
        if speed is not None and speed.get("max") not in (None, "no limit", "undefined"):
            try:
                speeds[int(road.get("id"))] = float(speed.get("max")) * _SPEED_UNITS.get(
                    speed.get("unit", "m/s"), 1.0
                )
            except ValueError:
                pass
    return speeds


def _controller_sequences(root: ET.Element) -> dict[str, tuple[str, int]]:
    """signal id -> (controller id, sequence) from the xodr's controllers."""
    seq_of_ctrl = {}
    for junction in root.iter("junction"):
        for ctrl in junction.findall("controller"):
            seq_of_ctrl[ctrl.get("id")] = int(ctrl.get("sequence") or 0)
    out = {}
    for ctrl in root.findall("controller"):
        cid = ctrl.get("id")
        seq = seq_of_ctrl.get(cid, int(ctrl.get("sequence") or 0))
        for control in ctrl.findall("control"):
            out[control.get("signalId")] = (cid, seq)
    return out


def _build(cmap: carla.Map, xodr: str, resolution: float, key: str) -> LaneGraph:
    root = ET.fromstring(xodr)
    speeds = _road_speeds(root)
    topology = cmap.get_topology()

    entries: dict[tuple, carla.Waypoint] = {}
    succ_keys: dict[tuple, list] = {}
    for a, b in topology:
        k = _wkey(a)
        entries.setdefault(k, a)
        succ_keys.setdefault(k, [])
        if _wkey(b) not in succ_keys[k]:
            succ_keys[k].append(_wkey(b))
    keys = list(entries)
    index = {k: i for i, k in enumerate(keys)}

    pts, yaws, marks_all, lane_of = [], [], [], []
    starts, counts, lengths, dss, junctions, widths, speed = [], [], [], [], [], [], []
    n_points = 0
    exits = {_wkey(a): b for a, b in topology}
    for i, k in enumerate(keys):
        a = entries[k]
        wps = [a] + [w for w in a.next_until_lane_end(resolution) if _wkey(w) == k]
        xyz = [(w.transform.location.x, w.transform.location.y, w.transform.location.z) for w in wps]
        yaw = [np.radians(w.transform.rotation.yaw) for w in wps]
        mk = [(int(w.left_lane_marking.type), int(w.right_lane_marking.type)) for w in wps]
        end = exits[k].transform  # successor's start = this lane's end
        xyz.append((end.location.x, end.location.y, end.location.z))
        yaw.append(np.radians(end.rotation.yaw))
        mk.append(mk[-1])
        p, y, m, length, ds = _resample(np.array(xyz), np.array(yaw), np.array(mk, dtype=np.int8), resolution)
        pts.append(p)
        yaws.append(y)
        marks_all.append(m)
        lane_of.append(np.full(len(p), i, np.int32))
        starts.append(n_points)
        counts.append(len(p))
        n_points += len(p)
        lengths.append(length)
        dss.append(ds)
        junctions.append(a.junction_id if a.is_junction else -1)
        widths.append(a.lane_width)
        speed.append(speeds.get(a.road_id, DEFAULT_SPEED_MS))

    succ_lists = [[index[s] for s in succ_keys[k] if s in index] for k in keys]
    succ_ptr = np.concatenate([[0], np.cumsum([len(s) for s in succ_lists])]).astype(np.int32)
    succ_idx = np.array([s for lst in succ_lists for s in lst], dtype=np.int32)

    def neighbour(w: carla.Waypoint | None, sign: int) -> int:
        if w is None or w.lane_type != carla.LaneType.Driving or np.sign(w.lane_id) != sign:
            return -1
        return index.get(_wkey(w), -1)

    left = np.array([neighbour(entries[k].get_left_lane(), np.sign(k[2])) for k in keys], np.int32)
    right = np.array([neighbour(entries[k].get_right_lane(), np.sign(k[2])) for k in keys], np.int32)

    n_lanes = len(keys)
    adj = csr_matrix((np.ones(len(succ_idx)), succ_idx, succ_ptr), shape=(n_lanes, n_lanes))
    _, labels = connected_components(adj, directed=True, connection="strong")
    main = labels == np.bincount(labels).argmax()

    junction_arr = np.array(junctions, np.int32)
    light_arrays, lane_light = _lights(cmap, root, index, succ_lists, junction_arr)

    return LaneGraph(
        lane_key=np.array(keys, np.int32).reshape(-1, 3),
        lane_start=np.array(starts, np.int32),
        lane_count=np.array(counts, np.int32),
        lane_length=np.array(lengths),
        lane_ds=np.array(dss),
        lane_junction=junction_arr,
        lane_speed_limit=np.array(speed, np.float32),
        lane_width=np.array(widths, np.float32),
        succ_ptr=succ_ptr,
        succ_idx=succ_idx,
        lane_left=left,
        lane_right=right,
        lane_light=lane_light,
        lane_main=main,
        points=np.concatenate(pts),
        yaw=np.concatenate(yaws),
        point_lane=np.concatenate(lane_of),
        mark_left=np.concatenate(marks_all)[:, 0].copy(),
        mark_right=np.concatenate(marks_all)[:, 1].copy(),
        xodr_hash=key,
        **light_arrays,
    )


def _lights(cmap: carla.Map, root: ET.Element, index: dict, succ_lists: list, lane_junction: np.ndarray):
    """Traffic lights from the map's signals, each tied to the approach lanes it guards."""
    n_lanes = len(succ_lists)
    preds: list[list[int]] = [[] for _ in range(n_lanes)]
    for i, succ in enumerate(succ_lists):
        for j in succ:
            preds[j].append(i)
    controllers = _controller_sequences(root)
    lane_light = np.full(n_lanes, -1, np.int32)
    ids, locs, junction_of, phase_key = [], [], [], []
    seen = set()
    for lm in cmap.get_all_landmarks_of_type(TRAFFIC_LIGHT_TYPE):
        if lm.id in seen:
            continue
        seen.add(lm.id)
        guarded = set()
        for lo, hi in lm.get_lane_validities():
            for lane_id in range(min(lo, hi), max(lo, hi) + 1):
                if lane_id == 0:
                    continue
                w = cmap.get_waypoint_xodr(lm.road_id, lane_id, lm.s)
                if w is None or _wkey(w) not in index:
                    continue
                lane = index[_wkey(w)]
                # A light placed on a junction's connecting lane guards the lane leading into it.
                guarded.update(preds[lane] if lane_junction[lane] >= 0 else [lane])
        guarded = {g for g in guarded if lane_junction[g] < 0}
        targets = {lane_junction[s] for g in guarded for s in succ_lists[g] if lane_junction[s] >= 0}
        if not guarded or not targets:
            continue
        t = len(ids)
        for g in guarded:
            if lane_light[g] < 0:
                lane_light[g] = t
        ids.append(int(lm.id) if lm.id.lstrip("-").isdigit() else t)
        loc = lm.transform.location
        locs.append((loc.x, loc.y, loc.z))
        junction_of.append(min(targets))
        ctrl, seq = controllers.get(lm.id, (f"light{lm.id}", 10_000 + t))
        phase_key.append((seq, ctrl))

    n = len(ids)
    phase = np.zeros(n, np.int32)
    phases = np.ones(n, np.int32)
    junction_of_arr = np.array(junction_of, np.int32)
    for j in set(junction_of):
        members = [t for t in range(n) if junction_of[t] == j]
        order = sorted({phase_key[t] for t in members})
        for t in members:
            phase[t] = order.index(phase_key[t])
            phases[t] = len(order)
    return (
        {
            "light_id": np.array(ids, np.int64),
            "light_location": np.array(locs, np.float64).reshape(-1, 3),
            "light_junction": junction_of_arr,
            "light_phase": phase,
            "light_phases": phases,
        },
        lane_light,
    )
