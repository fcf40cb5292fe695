"""Where pedestrians walk: a graph of sidewalk centre lines and the crossings between them.

Nodes are points sampled along the OpenDRIVE sidewalk lanes (every ~2 m); edges are of three kinds:
along a sidewalk (and short links joining sidewalks at corners, off every driving lane), a crossing
(from the map's crosswalk objects; on a map without any, across each road end at a junction, as a
crosswalk would be painted), and a mid-block road crossing (only walkers allowed on roads take it,
CARLA's `set_pedestrians_cross_factor`). Each crossing edge knows the driving lanes it crosses and
where along them, so traffic can yield to a walker on it.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass

import carla
import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components, dijkstra
from scipy.spatial import cKDTree

from carla_env.maps.lane_graph import LaneGraph

SIDEWALK, CROSSING, ROAD = 0, 1, 2  # edge kinds
SAMPLE = 2.0  # m between nodes along a sidewalk
JOIN = 1.5  # m: sidewalk ends this close continue into each other
CORNER = 12.0  # m: a dangling sidewalk end joins the nearest sidewalk within this, off the road
CROSSWALK_REACH = 4.0  # m from a crosswalk's end to the sidewalk node it lands on
MAX_DESTINATIONS = 256  # nodes random walker routes lead to (their routing tables are cached)
MID_BLOCK_SPACING = 40.0  # m between mid-block road crossings along a road
MID_BLOCK_MARGIN = 15.0  # m from a road's ends (junction crossings are there)
NEAR = 5.0  # m: a nearest-node search looks this far first (nodes are SAMPLE apart along a sidewalk)
WALKER_HALF_WIDTH = 0.35  # m: clearance from a lane's edge for a link to count as off the road


class NoSidewalks(ValueError):
    """The map has no sidewalk lane."""


@dataclass(frozen=True, eq=False)
class WalkGraph:
    node_xyz: np.ndarray  # (N, 3) sidewalk centre points, CARLA frame
    node_width: np.ndarray  # (N,) width of the sidewalk there (m)
    edge_a: np.ndarray  # (E,) int64
    edge_b: np.ndarray  # (E,) int64
    edge_kind: np.ndarray  # (E,) int64: SIDEWALK, CROSSING or ROAD
    adj_ptr: np.ndarray  # CSR over nodes: neighbours adj_node[adj_ptr[n]:adj_ptr[n+1]] by adj_edge
    adj_node: np.ndarray
    adj_edge: np.ndarray
    cross_ptr: np.ndarray  # CSR over edges: lanes cross_lane[cross_ptr[e]:cross_ptr[e+1]] at cross_s
    cross_lane: np.ndarray
    cross_s: np.ndarray
    cross_at: np.ndarray  # metres from the edge's node a to where it crosses that lane

    @property
    def num_nodes(self) -> int:
        return len(self.node_xyz)

    def csgraph(self, roads: bool):
        """Symmetric sparse graph of edge lengths; ROAD edges only when `roads` (built once)."""
        key = ("csgraph", roads)
        if key not in self.__dict__:
            self.__dict__[key] = self._csgraph(roads)
        return self.__dict__[key]

    def _csgraph(self, roads: bool):
        keep = (self.edge_kind != ROAD) | roads
        a, b = self.edge_a[keep], self.edge_b[keep]
        w = np.linalg.norm(self.node_xyz[a] - self.node_xyz[b], axis=1) + 1e-3
        n = self.num_nodes
        return coo_matrix(
            (np.concatenate([w, w]), (np.concatenate([a, b]), np.concatenate([b, a]))), (n, n)
        ).tocsr()

    def components(self, roads: bool) -> np.ndarray:
        key = ("components", roads)
        if key not in self.__dict__:
            self.__dict__[key] = connected_components(self.csgraph(roads), directed=False)[1]
        return self.__dict__[key]

    def nearest_node(self, xyz, reachable_from: int | None = None, roads: bool = False) -> int:
        """The node nearest `xyz`, of those reachable from node `reachable_from` if given (across roads
        anywhere if `roads`): np.argmin over np.linalg.norm distances, so of equally near ones the lowest."""
        if reachable_from is None:
            nodes, tree = self._node_tree(None)
        else:
            nodes, tree = self._node_tree(roads, int(self.components(roads)[reachable_from]))
        p = np.asarray(xyz, float)
        # Only the nodes within NEAR when the nearest is clearly inside (the tree's distances may differ
        # from the norm's in the last bits), else all of them.
        near = tree.query_ball_point(p, NEAR, return_sorted=True)
        if near:
            d = np.linalg.norm(tree.data[near] - p, axis=1)
            if d.min() < NEAR * (1 - 1e-9):
                return int(nodes[near[d.argmin()]])
        return int(nodes[np.linalg.norm(tree.data - p, axis=1).argmin()])

    def _node_tree(self, roads: bool | None, label: int = -1):
        """(nodes in ascending order, a cKDTree of their points): all nodes if `roads` is None, else those
        of component `label` of components(roads). Built once each."""
        key = ("tree", roads, label)
        if key not in self.__dict__:
            if roads is None:
                nodes = np.arange(self.num_nodes)
            else:
                nodes = np.flatnonzero(self.components(roads) == label)
            self.__dict__[key] = (nodes, cKDTree(self.node_xyz[nodes]))
        return self.__dict__[key]

    def destinations(self) -> np.ndarray:
        """Nodes random routes lead to: up to MAX_DESTINATIONS spread along the sidewalks, so that each
        one's routing table is computed once per town and reused."""
        return np.arange(0, self.num_nodes, max(1, self.num_nodes // MAX_DESTINATIONS))

    def next_hops(self, goal: int, roads: bool) -> np.ndarray:
        """(N,) int32: from each node, the next node on a shortest walk to `goal` (-1: none). The tables
        of all destinations() are computed together on first use (one scipy call), others once each."""
        cache = self.__dict__.setdefault("_next_hops", {})
        if (goal, roads) not in cache:
            goals = self.destinations() if ("bulk", roads) not in cache else np.array([goal])
            cache[("bulk", roads)] = True
            # csgraph() is symmetric already: directed=True spares scipy symmetrising it on every call
            # (same predecessors: tests/test_walkers.py checks every goal of a town).
            _, pred = dijkstra(self.csgraph(roads), directed=True, indices=goals, return_predecessors=True)
            for g, row in zip(goals.tolist(), pred.reshape(len(goals), -1), strict=True):
                cache[(g, roads)] = np.where(row < 0, -1, row).astype(np.int32)
            if (goal, roads) not in cache:
                return self.next_hops(goal, roads)
        return cache[(goal, roads)]


def _sidewalk_lanes(root: ET.Element):
    """(road id, lane id, s0, s1, junction id) of each sidewalk lane, per lane section."""
    out = []
    for road in root.iter("road"):
        rid, length = int(road.get("id")), float(road.get("length"))
        junction = int(road.get("junction", "-1"))
        sections = road.findall("lanes/laneSection")
        starts = [float(s.get("s")) for s in sections] + [length]
        for k, sec in enumerate(sections):
            for lane in sec.iter("lane"):
                if lane.get("type") == "sidewalk":
                    out.append((rid, int(lane.get("id")), starts[k], starts[k + 1], junction))
    return out


def _road_ends(root: ET.Element) -> dict[int, tuple[bool, bool]]:
    """road id -> (start touches a junction, end touches a junction)."""
    ends = {}
    for road in root.iter("road"):
        link = road.find("link")
        pred = link.find("predecessor") if link is not None else None
        succ = link.find("successor") if link is not None else None
        ends[int(road.get("id"))] = (
            pred is not None and pred.get("elementType") == "junction",
            succ is not None and succ.get("elementType") == "junction",
        )
    return ends


def _crosswalk_polygons(cmap: carla.Map) -> list[np.ndarray]:
    """The map's crosswalk outlines: get_crosswalks() lists closed polygons one after another."""
    pts = [(p.x, p.y, p.z) for p in cmap.get_crosswalks()]
    polys, start = [], 0
    for k in range(1, len(pts)):
        if k > start and np.allclose(pts[k], pts[start], atol=1e-3):
            if k - start >= 3:
                polys.append(np.array(pts[start:k]))
            start = k + 1
    return polys


def _lanes_crossed(lanes: LaneGraph, tree: cKDTree, a: np.ndarray, b: np.ndarray):
    """(lane, s, metres from a) of each driving lane the segment a-b passes over, at its closest sample."""
    length = float(np.linalg.norm(b[:2] - a[:2]))
    n = max(2, int(length / 0.5) + 1)
    along = np.linspace(0, 1, n)
    samples = a[None, :2] + (b - a)[None, :2] * along[:, None]
    best: dict[int, tuple[float, float, float]] = {}
    for p, t in zip(samples, along, strict=True):
        for idx in tree.query_ball_point(p, 3.0):
            lane = int(lanes.point_lane[idx])
            d = float(np.hypot(*(lanes.points[idx, :2] - p)))
            if d <= lanes.lane_width[lane] / 2 + WALKER_HALF_WIDTH and d < best.get(lane, (np.inf,))[0]:
                best[lane] = (
                    d,
                    float((idx - lanes.lane_start[lane]) * lanes.lane_ds[lane]),
                    float(t * length),
                )
    crossed = sorted((lane, s, at) for lane, (_, s, at) in best.items())
    # Junction lanes only where the crossing spans no other: traffic inside a junction sees a walker on
    # its exit lane, and a walker holding junction lanes would stall right of way for the whole junction.
    outside = [c for c in crossed if lanes.lane_junction[c[0]] < 0]
    return outside or crossed


def _off_road(lanes: LaneGraph, tree: cKDTree, a: np.ndarray, b: np.ndarray) -> bool:
    return not _lanes_crossed(lanes, tree, a, b)


def build_walk_graph(cmap: carla.Map, xodr: str, lanes: LaneGraph) -> WalkGraph:
    root = ET.fromstring(xodr)
    tree = cKDTree(lanes.points[:, :2])
    xyz, width, lines = [], [], []  # lines: (first node, last node, road, lane, s0 end?, s1 end?)
    edges: list[tuple[int, int, int]] = []
    by_road_side: dict[tuple[int, int], list[tuple[float, int]]] = {}  # (road, sign) -> [(s, node)]
    for rid, lane_id, s0, s1, junction in _sidewalk_lanes(root):
        n = max(2, int(np.ceil((s1 - s0) / SAMPLE)) + 1)
        nodes = []
        for s in np.linspace(s0 + 1e-3, s1 - 1e-3, n):
            w = cmap.get_waypoint_xodr(rid, lane_id, float(s))
            if w is None or w.lane_type != carla.LaneType.Sidewalk:
                continue
            loc = w.transform.location
            if nodes and np.hypot(loc.x - xyz[nodes[-1]][0], loc.y - xyz[nodes[-1]][1]) < 0.2:
                continue
            nodes.append(len(xyz))
            xyz.append((loc.x, loc.y, loc.z))
            width.append(w.lane_width)
            if junction < 0:
                by_road_side.setdefault((rid, int(np.sign(lane_id))), []).append((float(s), nodes[-1]))
        if len(nodes) < 2:
            continue
        edges += [(a, b, SIDEWALK) for a, b in zip(nodes[:-1], nodes[1:], strict=True)]
        lines.append((nodes[0], nodes[-1], rid, lane_id, s0, s1))
    if not xyz:
        raise NoSidewalks("the map has no sidewalk lanes: nowhere for walkers to walk")
    xyz_arr = np.array(xyz, float)
    line_of = np.full(len(xyz_arr), -1)
    for k, (first, last, *_rest) in enumerate(lines):
        line_of[first : last + 1] = k
    node_tree = cKDTree(xyz_arr[:, :2])

    # Sidewalk ends: continue into a touching sidewalk, else join the nearest one off the road (corners).
    linked = set()
    for k, (first, last, *_rest) in enumerate(lines):
        for end in (first, last):
            near = [
                j
                for j in node_tree.query_ball_point(xyz_arr[end, :2], CORNER)
                if line_of[j] != k and j != end
            ]
            near.sort(key=lambda j: np.hypot(*(xyz_arr[j, :2] - xyz_arr[end, :2])))
            for j in near:
                d = np.hypot(*(xyz_arr[j, :2] - xyz_arr[end, :2]))
                if d <= JOIN or _off_road(lanes, tree, xyz_arr[end], xyz_arr[j]):
                    key = (min(end, j), max(end, j))
                    if key not in linked:
                        linked.add(key)
                        edges.append((end, j, SIDEWALK))
                    break

    # Crossings: the map's crosswalks, else across each road end at a junction.
    crossings: list[tuple[int, int]] = []
    polygons = _crosswalk_polygons(cmap)
    for poly in polygons:
        centre = poly.mean(axis=0)
        _, _, vt = np.linalg.svd(poly[:, :2] - centre[:2])
        axis = vt[0]
        reach = np.abs((poly[:, :2] - centre[:2]) @ axis).max()
        ends = []
        for sign in (-1.0, 1.0):
            p = centre[:2] + sign * axis * reach
            d, j = node_tree.query(p)
            ends.append(int(j) if d <= CROSSWALK_REACH else -1)
        if min(ends) >= 0 and ends[0] != ends[1]:
            crossings.append((ends[0], ends[1]))
    if not polygons:
        ends_at_junction = _road_ends(root)
        for (rid, sign), pts in by_road_side.items():
            if sign < 0 or (rid, -1) not in by_road_side:
                continue
            left, right = sorted(pts), sorted(by_road_side[(rid, -1)])
            at_start, at_end = ends_at_junction.get(rid, (False, False))
            if at_start:
                crossings.append((left[0][1], right[0][1]))
            if at_end:
                crossings.append((left[-1][1], right[-1][1]))
    edges += [(a, b, CROSSING) for a, b in crossings]

    # Mid-block road crossings, for walkers allowed on the road.
    for (rid, sign), pts in by_road_side.items():
        if sign < 0 or (rid, -1) not in by_road_side:
            continue
        left, right = sorted(pts), sorted(by_road_side[(rid, -1)])
        s_left = np.array([s for s, _ in left])
        s_right = np.array([s for s, _ in right])
        lo, hi = (
            max(s_left[0], s_right[0]) + MID_BLOCK_MARGIN,
            min(s_left[-1], s_right[-1]) - MID_BLOCK_MARGIN,
        )
        for s in np.arange(lo, hi, MID_BLOCK_SPACING):
            a = left[int(np.abs(s_left - s).argmin())][1]
            b = right[int(np.abs(s_right - s).argmin())][1]
            edges.append((a, b, ROAD))

    e = np.array(edges, np.int64).reshape(-1, 3)
    e = e[e[:, 0] != e[:, 1]]
    # Crossing edges: the lanes they cross; a "crossing" that crosses nothing is a sidewalk link.
    cross: list[list[tuple[int, float]]] = []
    for a, b, kind in e:
        crossed = _lanes_crossed(lanes, tree, xyz_arr[a], xyz_arr[b]) if kind != SIDEWALK else []
        cross.append(crossed)
    kinds = e[:, 2].copy()
    kinds[(kinds != SIDEWALK) & (np.array([len(c) for c in cross]) == 0)] = SIDEWALK
    # A sidewalk link must not cross a lane (e.g. two sidewalks sampled across a narrow road).
    keep = np.array([k != SIDEWALK or not c for k, c in zip(kinds, cross, strict=True)], bool)
    e, kinds = e[keep], kinds[keep]
    cross = [c for c, k in zip(cross, keep, strict=True) if k]

    n = len(xyz_arr)
    a, b = e[:, 0], e[:, 1]
    ends = np.concatenate([a, b])
    other = np.concatenate([b, a])
    edge_ids = np.concatenate([np.arange(len(e)), np.arange(len(e))])
    order = np.argsort(ends, kind="stable")
    adj_ptr = np.searchsorted(ends[order], np.arange(n + 1)).astype(np.int64)
    cross_ptr = np.concatenate([[0], np.cumsum([len(c) for c in cross])]).astype(np.int64)
    return WalkGraph(
        node_xyz=xyz_arr,
        node_width=np.array(width, float),
        edge_a=a.copy(),
        edge_b=b.copy(),
        edge_kind=kinds.astype(np.int64),
        adj_ptr=adj_ptr,
        adj_node=other[order].astype(np.int64),
        adj_edge=edge_ids[order].astype(np.int64),
        cross_ptr=cross_ptr,
        cross_lane=np.array([lane for c in cross for lane, _, _ in c], np.int64),
        cross_s=np.array([s for c in cross for _, s, _ in c], float),
        cross_at=np.array([at for c in cross for _, _, at in c], float),
    )
