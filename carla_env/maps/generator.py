"""Procedural OpenDRIVE 1.4 towns: a grid of blocks with 4-way and T junctions,
traffic lights, two-lane streets, multi-lane avenues and curved corners.

The output is plain OpenDRIVE text: `carla.Map(name, xodr)` parses it, and a real
CARLA server loads it with `client.generate_opendrive_world(xodr)`.

Conventions: OpenDRIVE frame (x east, y north, counter-clockwise headings).
Straight roads run west->east or south->north; right lanes (negative ids) drive
along the reference line (right-hand traffic).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from xml.sax.saxutils import quoteattr

import numpy as np

# Arm directions out of a grid node: E, N, W, S.
_DIRS = {"E": (1.0, 0.0), "N": (0.0, 1.0), "W": (-1.0, 0.0), "S": (0.0, -1.0)}


@dataclass(frozen=True)
class TownSpec:
    """Parameters of a generated grid town."""

    columns: int = 4  # grid nodes west->east
    rows: int = 4  # grid nodes south->north
    block_min: float = 60.0  # metres between neighbouring nodes
    block_max: float = 90.0
    lane_width: float = 3.5
    avenue_lanes: int = 2  # lanes per direction on avenues
    avenue_fraction: float = 0.34  # share of grid lines that are avenues
    removed_edge_fraction: float = 0.15  # interior edges dropped (turns 4-way into T junctions)
    signalized_fraction: float = 1.0  # junctions with traffic lights
    speed_kmh: float = 40.0
    corner_radius: float = 18.0
    sidewalk_width: float = 2.5  # each side of every street; crosswalks on each junction arm
    seed: int = 0

    def __post_init__(self) -> None:
        if self.columns < 2 or self.rows < 2:
            raise ValueError("a generated town needs at least 2 columns and 2 rows")
        if not 20.0 <= self.block_min <= self.block_max:
            raise ValueError("need 20 <= block_min <= block_max")


# The project's default towns. Names are stable: configs refer to them.
BUILTIN_TOWNS: dict[str, TownSpec] = {
    "GridTown01": TownSpec(columns=4, rows=4, seed=1),
    "GridTown02": TownSpec(columns=5, rows=4, seed=2),
    "GridTown03": TownSpec(columns=3, rows=3, seed=3, avenue_fraction=0.0),
    "GridTown04": TownSpec(columns=4, rows=5, seed=4),
    "GridTown05": TownSpec(columns=6, rows=6, seed=5),
}


@dataclass
class _Lane:
    id: int
    width: float
    mark: str  # roadMark type of the lane's outer edge
    pred: int | None = None
    succ: int | None = None
    type: str = "driving"


@dataclass
class _Road:
    id: int
    geometry: list[tuple]  # (kind, x, y, hdg, length, curvature)
    left: list[_Lane]
    right: list[_Lane]
    center_mark: str
    junction: int = -1
    pred: tuple | None = None  # (elementType, id, contactPoint|None)
    succ: tuple | None = None
    signals: list[dict] = field(default_factory=list)
    crosswalks: list[dict] = field(default_factory=list)

    @property
    def length(self) -> float:
        return sum(g[4] for g in self.geometry)


@dataclass
class _Arm:
    direction: str
    road: _Road
    contact: str  # 'start' if the road begins at this node, else 'end'
    lanes: int

    def incoming_ids(self) -> list[int]:
        # Lanes driving towards the node, innermost first.
        sign = -1 if self.contact == "end" else 1
        return [sign * k for k in range(1, self.lanes + 1)]

    def outgoing_ids(self) -> list[int]:
        return [-i for i in self.incoming_ids()]


def generate_town(spec: TownSpec, name: str = "GeneratedTown") -> str:
    """Return OpenDRIVE text for a grid town described by `spec`."""
    rng = np.random.default_rng(spec.seed)
    xs = np.concatenate([[0.0], np.cumsum(rng.uniform(spec.block_min, spec.block_max, spec.columns - 1))])
    ys = np.concatenate([[0.0], np.cumsum(rng.uniform(spec.block_min, spec.block_max, spec.rows - 1))])
    # Avenues are interior grid lines only, so every corner joins two streets of equal lane count.
    avenue_cols = _pick_avenues(spec.columns, spec.avenue_fraction, rng)
    avenue_rows = _pick_avenues(spec.rows, spec.avenue_fraction, rng)

    # Undirected grid edges between nodes (i, j).
    edges = set()
    for i in range(spec.columns):
        for j in range(spec.rows):
            if i + 1 < spec.columns:
                edges.add(((i, j), (i + 1, j)))
            if j + 1 < spec.rows:
                edges.add(((i, j), (i, j + 1)))
    edges = _drop_edges(edges, spec, rng)

    degree: dict[tuple, int] = {}
    for a, b in edges:
        degree[a] = degree.get(a, 0) + 1
        degree[b] = degree.get(b, 0) + 1

    def lanes_of(a, b) -> int:
        horizontal = a[1] == b[1]
        avenue = (a[1] in avenue_rows) if horizontal else (a[0] in avenue_cols)
        return spec.avenue_lanes if avenue else 1

    def node_radius(node) -> float:
        if degree[node] == 2:
            return spec.corner_radius
        # Clear the widest crossing road plus a margin for turning lanes.
        return spec.avenue_lanes * spec.lane_width + 5.0

    ids = _Ids()
    roads: list[_Road] = []
    arms: dict[tuple, list[_Arm]] = {n: [] for n in degree}
    for a, b in sorted(edges):
        pa = np.array([xs[a[0]], ys[a[1]]])
        pb = np.array([xs[b[0]], ys[b[1]]])
        u = (pb - pa) / np.linalg.norm(pb - pa)
        start = pa + u * node_radius(a)
        end = pb - u * node_radius(b)
        n = lanes_of(a, b)
        road = _straight_road(ids.road(), start, end, n, spec.lane_width, spec.sidewalk_width)
        roads.append(road)
        d_ab = "E" if a[1] == b[1] else "N"
        d_ba = "W" if a[1] == b[1] else "S"
        arms[a].append(_Arm(d_ab, road, "start", n))
        arms[b].append(_Arm(d_ba, road, "end", n))

    junctions: list[dict] = []
    controllers: list[dict] = []
    signal_rng = np.random.default_rng(spec.seed + 7919)
    for node in sorted(arms):
        centre = np.array([xs[node[0]], ys[node[1]]])
        node_arms = sorted(arms[node], key=lambda arm: "ENWS".index(arm.direction))
        if len(node_arms) == 2:
            roads.append(
                _corner_road(
                    ids.road(), centre, node_radius(node), node_arms, spec.lane_width, spec.sidewalk_width
                )
            )
        else:
            signalized = signal_rng.random() < spec.signalized_fraction
            junction, conn_roads, ctrls = _junction(
                ids, centre, node_radius(node), node_arms, spec, signalized
            )
            junctions.append(junction)
            roads.extend(conn_roads)
            controllers.extend(ctrls)

    return _to_xml(name, roads, junctions, controllers, spec.speed_kmh)


def _pick_avenues(count: int, fraction: float, rng: np.random.Generator) -> set[int]:
    interior = np.arange(1, count - 1)
    n = min(len(interior), int(round(fraction * count)))
    return set(rng.choice(interior, n, replace=False).tolist()) if n else set()


def _drop_edges(edges: set, spec: TownSpec, rng: np.random.Generator) -> set:
    """Drop interior edges while every node keeps >= 3 arms (T junctions) and the grid stays connected."""
    edges = set(edges)

    def degree(n):
        return sum(1 for e in edges if n in e)

    interior = sorted(e for e in edges if degree(e[0]) == 4 and degree(e[1]) == 4)
    order = rng.permutation(len(interior))
    target = int(round(spec.removed_edge_fraction * len(interior)))
    removed = 0
    for k in order:
        if removed >= target:
            break
        e = interior[k]
        if degree(e[0]) < 4 or degree(e[1]) < 4:
            continue
        edges.discard(e)
        if _connected(edges):
            removed += 1
        else:
            edges.add(e)
    return edges


def _connected(edges: set) -> bool:
    adj: dict = {}
    for a, b in edges:
        adj.setdefault(a, []).append(b)
        adj.setdefault(b, []).append(a)
    start = next(iter(adj))
    seen, stack = {start}, [start]
    while stack:
        for m in adj[stack.pop()]:
            if m not in seen:
                seen.add(m)
                stack.append(m)
    return len(seen) == len(adj)


class _Ids:
    def __init__(self) -> None:
        self._road = 0
        self._junction = 1000
        self._signal = 5000
        self._controller = 9000
        self._crosswalk = 20000

    def road(self) -> int:
        self._road += 1
        return self._road

    def junction(self) -> int:
        self._junction += 1
        return self._junction

    def signal(self) -> int:
        self._signal += 1
        return self._signal

    def crosswalk(self) -> int:
        self._crosswalk += 1
        return self._crosswalk

    def controller(self) -> int:
        self._controller += 1
        return self._controller


def _lane_sides(n: int, width: float, sidewalk: float) -> tuple[list[_Lane], list[_Lane], str]:
    """Lanes of a two-way road with n lanes per direction: outer edges solid, lane dividers broken;
    a sidewalk (lane n + 1) beyond each outer edge."""
    left = [_Lane(k, width, "solid" if k == n else "broken") for k in range(n, 0, -1)]
    right = [_Lane(-k, width, "solid" if k == n else "broken") for k in range(1, n + 1)]
    if sidewalk > 0:
        left.insert(0, _Lane(n + 1, sidewalk, "none", type="sidewalk"))
        right.append(_Lane(-(n + 1), sidewalk, "none", type="sidewalk"))
    center = "solid solid" if n > 1 else "solid"
    return left, right, center


def _straight_road(
    rid: int, start: np.ndarray, end: np.ndarray, n: int, width: float, sidewalk: float
) -> _Road:
    d = end - start
    hdg = math.atan2(d[1], d[0])
    left, right, center = _lane_sides(n, width, sidewalk)
    return _Road(rid, [("line", start[0], start[1], hdg, float(np.linalg.norm(d)), 0.0)], left, right, center)


def _turn_geometry(p0: np.ndarray, h0: float, p1: np.ndarray, h1: float) -> list[tuple]:
    """Line/arc/line from (p0, h0) to (p1, h1) for a right-angle turn or a straight."""
    d0v = np.array([math.cos(h0), math.sin(h0)])
    d1v = np.array([math.cos(h1), math.sin(h1)])
    cross = d0v[0] * d1v[1] - d0v[1] * d1v[0]
    if abs(cross) < 1e-9:
        length = float(np.linalg.norm(p1 - p0))
        return [("line", p0[0], p0[1], h0, length, 0.0)]
    # Corner where the two tangent lines meet: p0 + t*d0 = p1 - u*d1.
    mat = np.column_stack([d0v, d1v])
    t, u = np.linalg.solve(mat, p1 - p0)
    radius = min(t, u)
    sign = 1.0 if cross > 0 else -1.0
    arc_len = radius * math.pi / 2
    geoms = []
    x, y = p0
    if t > u:
        geoms.append(("line", x, y, h0, t - u, 0.0))
        x, y = p0 + d0v * (t - u)
    geoms.append(("arc", x, y, h0, arc_len, sign / radius))
    if u > t:
        corner = p0 + d0v * t
        q = corner + d1v * t
        geoms.append(("line", q[0], q[1], h1, u - t, 0.0))
    return geoms


def _arm_vectors(arm: _Arm) -> tuple[np.ndarray, np.ndarray]:
    u = np.array(_DIRS[arm.direction])
    return u, np.array([u[1], -u[0]])  # outward direction, its right normal


def _lane_point(centre, radius, arm: _Arm, k: int, width: float, incoming: bool) -> tuple[np.ndarray, float]:
    """Left edge of the k-th lane (1 = innermost) of an arm at the junction boundary, and its heading.

    A connecting road's single lane (-1) lies right of its reference line, so the line runs on that edge.
    """
    u, _ = _arm_vectors(arm)
    h = -u if incoming else u
    right = np.array([h[1], -h[0]])
    p = centre + u * radius + right * (k - 1) * width
    return p, math.atan2(h[1], h[0])


def _corner_road(rid: int, centre, radius: float, arms: list[_Arm], width: float, sidewalk: float) -> _Road:
    a1, a2 = arms
    n = min(a1.lanes, a2.lanes)
    u1, _ = _arm_vectors(a1)
    u2, _ = _arm_vectors(a2)
    p0 = centre + u1 * radius
    p1 = centre + u2 * radius
    geom = _turn_geometry(p0, math.atan2(-u1[1], -u1[0]), p1, math.atan2(u2[1], u2[0]))
    left, right, center = _lane_sides(n, width, sidewalk)
    road = _Road(rid, geom, left, right, center)
    road.pred = ("road", a1.road.id, a1.contact)
    road.succ = ("road", a2.road.id, a2.contact)
    # Lane links, both ways: same sign across an end->start contact, flipped otherwise.
    for lane in left + right:
        k = abs(lane.id)
        s = 1 if lane.id > 0 else -1
        lane.pred = s * k * (1 if a1.contact == "end" else -1)
        lane.succ = s * k * (1 if a2.contact == "start" else -1)
    for arm, contact_here in ((a1, "start"), (a2, "end")):
        link = ("road", rid, contact_here)
        if arm.contact == "start":
            arm.road.pred = link
        else:
            arm.road.succ = link
        flip = 1 if (arm.contact == "end") == (contact_here == "start") else -1
        for lane in arm.road.left + arm.road.right:
            other = lane.id * flip if abs(lane.id) <= n + (sidewalk > 0) else None
            if arm.contact == "start":
                lane.pred = other
            else:
                lane.succ = other
    return road


def _junction(ids: _Ids, centre, radius: float, arms: list[_Arm], spec: TownSpec, signalized: bool):
    jid = ids.junction()
    junction = {"id": jid, "connections": [], "controllers": []}
    conn_roads = []
    w = spec.lane_width
    for a_in in arms:
        link = ("junction", jid, None)
        if a_in.contact == "start":
            a_in.road.pred = link
        else:
            a_in.road.succ = link
        for a_out in arms:
            if a_out is a_in:
                continue
            u_in, _ = _arm_vectors(a_in)
            u_out, _ = _arm_vectors(a_out)
            turn = u_in[0] * u_out[1] - u_in[1] * u_out[0]  # >0: out is left of in's outward dir
            straight = abs(turn) < 1e-9
            # Driving in = -u_in; a right turn leaves to the arm on the driver's right.
            right_turn = not straight and turn > 0
            pairs = []
            if straight:
                pairs = [(k, k) for k in range(1, min(a_in.lanes, a_out.lanes) + 1)]
            elif right_turn:
                pairs = [(a_in.lanes, a_out.lanes)]
            else:
                pairs = [(1, 1)]
            for k_in, k_out in pairs:
                p0, h0 = _lane_point(centre, radius, a_in, k_in, w, incoming=True)
                p1, h1 = _lane_point(centre, radius, a_out, k_out, w, incoming=False)
                road = _Road(ids.road(), _turn_geometry(p0, h0, p1, h1), [], [_Lane(-1, w, "none")], "none")
                # The curb of the junction's corner (or of its side across from a missing arm) is the
                # outer edge of the turn into the next arm anticlockwise: its sidewalk rides that road.
                next_arm = arms[(arms.index(a_in) + 1) % len(arms)]
                if spec.sidewalk_width > 0 and a_out is next_arm and k_in == a_in.lanes:
                    road.right.append(_Lane(-2, spec.sidewalk_width, "none", type="sidewalk"))
                road.junction = jid
                lane_in = a_in.incoming_ids()[k_in - 1]
                lane_out = a_out.outgoing_ids()[k_out - 1]
                road.pred = ("road", a_in.road.id, a_in.contact)
                road.succ = ("road", a_out.road.id, a_out.contact)
                road.right[0].pred = lane_in
                road.right[0].succ = lane_out
                conn_roads.append(road)
                junction["connections"].append((a_in.road.id, road.id, lane_in))
    controllers = []
    if signalized:
        # One controller per arm; CARLA cycles a junction's controllers in sequence order.
        for seq, arm in enumerate(arms):
            sid = ids.signal()
            n = arm.lanes
            length = arm.road.length
            if arm.contact == "end":
                s, t, orient, lanes = length - 1.0, -(n * w + 1.0), "+", (-n, -1)
            else:
                s, t, orient, lanes = 1.0, n * w + 1.0, "-", (1, n)
            arm.road.signals.append({"id": sid, "s": s, "t": t, "orientation": orient, "lanes": lanes})
            cid = ids.controller()
            controllers.append({"id": cid, "signals": [sid], "sequence": seq})
            junction["controllers"].append((cid, seq))
    if spec.sidewalk_width > 0:
        for arm in arms:  # across the arm, 1.2 m from the junction: clear of cars at the stop line
            s = 1.2 if arm.contact == "start" else arm.road.length - 1.2
            arm.road.crosswalks.append(
                {"id": ids.crosswalk(), "s": s, "half_length": arm.lanes * w, "half_width": 1.0}
            )
    return junction, conn_roads, controllers


def _crosswalk_xml(c: dict) -> str:
    hl, hw = c["half_length"], c["half_width"]
    corners = [(hl, hw), (hl, -hw), (-hl, -hw), (-hl, hw), (hl, hw)]
    outline = "".join(f'<cornerLocal u="{_f(u)}" v="{_f(v)}" z="0"/>' for u, v in corners)
    return (
        f'      <object id="{c["id"]}" name="Crosswalk" type="crosswalk" s="{_f(c["s"])}" t="0" zOffset="0" '
        f'hdg="1.570796327" pitch="0" roll="0" orientation="none" length="{_f(2 * hl)}" width="{_f(2 * hw)}">'
        f"<outline>{outline}</outline></object>\n"
    )


def _f(x: float) -> str:
    return f"{float(x):.10g}"


def _link_xml(kind: str, link: tuple | None) -> str:
    if link is None:
        return ""
    etype, eid, contact = link
    cp = f' contactPoint="{contact}"' if contact else ""
    return f'      <{kind} elementType="{etype}" elementId="{eid}"{cp}/>\n'


def _lane_xml(lane: _Lane) -> str:
    links = ""
    if lane.pred is not None:
        links += f'<predecessor id="{lane.pred}"/>'
    if lane.succ is not None:
        links += f'<successor id="{lane.succ}"/>'
    return (
        f'          <lane id="{lane.id}" type="{lane.type}" level="false">\n'
        f"            <link>{links}</link>\n"
        f'            <width sOffset="0" a="{_f(lane.width)}" b="0" c="0" d="0"/>\n'
        f'            <roadMark sOffset="0" type="{lane.mark}" weight="standard" color="white" width="0.15" laneChange="none"/>\n'
        f"          </lane>\n"
    )


def _to_xml(
    name: str, roads: list[_Road], junctions: list[dict], controllers: list[dict], speed: float
) -> str:
    out = [
        '<?xml version="1.0" encoding="UTF-8"?>\n<OpenDRIVE>\n',
        f'  <header revMajor="1" revMinor="4" name={quoteattr(name)} version="1" vendor="carla_env">\n    <geoReference><![CDATA[+proj=tmerc +lat_0=0 +lon_0=0 +k=1 +x_0=0 +y_0=0 +datum=WGS84 +units=m +no_defs]]></geoReference>\n  </header>\n',
    ]
    for r in roads:
        out.append(
            f'  <road name="Road {r.id}" length="{_f(r.length)}" id="{r.id}" junction="{r.junction}">\n'
        )
        out.append(
            "    <link>\n"
            + _link_xml("predecessor", r.pred)
            + _link_xml("successor", r.succ)
            + "    </link>\n"
        )
        out.append(
            f'    <type s="0" type="town"><speed max="{_f(speed)}" unit="km/h"/></type>\n    <planView>\n'
        )
        s = 0.0
        for kind, x, y, hdg, length, curv in r.geometry:
            shape = "<line/>" if kind == "line" else f'<arc curvature="{_f(curv)}"/>'
            out.append(
                f'      <geometry s="{_f(s)}" x="{_f(x)}" y="{_f(y)}" hdg="{_f(hdg)}" length="{_f(length)}">{shape}</geometry>\n'
            )
            s += length
        out.append("    </planView>\n")
        out.append('    <elevationProfile><elevation s="0" a="0" b="0" c="0" d="0"/></elevationProfile>\n')
        out.append('    <lateralProfile/>\n    <lanes>\n      <laneSection s="0">\n')
        if r.left:
            out.append("        <left>\n" + "".join(_lane_xml(lane) for lane in r.left) + "        </left>\n")
        out.append(
            '        <center><lane id="0" type="none" level="false">'
            f'<roadMark sOffset="0" type="{r.center_mark}" weight="standard" color="{"yellow" if r.junction < 0 else "white"}" width="0.15"/>'
            "</lane></center>\n"
        )
        out.append("        <right>\n" + "".join(_lane_xml(lane) for lane in r.right) + "        </right>\n")
        out.append("      </laneSection>\n    </lanes>\n")
        if r.crosswalks:
            out.append(
                "    <objects>\n" + "".join(_crosswalk_xml(c) for c in r.crosswalks) + "    </objects>\n"
            )
        if r.signals:
            out.append("    <signals>\n")
            for sig in r.signals:
                lo, hi = sig["lanes"]
                out.append(
                    f'      <signal s="{_f(sig["s"])}" t="{_f(sig["t"])}" id="{sig["id"]}" name="Signal_3Light_Post01" '
                    f'dynamic="yes" orientation="{sig["orientation"]}" zOffset="0" country="OpenDRIVE" type="1000001" '
                    f'subtype="-1" value="-1" text="" height="1.16" width="0.52" hOffset="0" pitch="0" roll="0">'
                    f'<validity fromLane="{lo}" toLane="{hi}"/></signal>\n'
                )
            out.append("    </signals>\n")
        out.append("  </road>\n")
    for c in controllers:
        out.append(f'  <controller name="ctrl{c["id"]}" id="{c["id"]}" sequence="{c["sequence"]}">\n')
        out.extend(f'    <control signalId="{sid}" type="0"/>\n' for sid in c["signals"])
        out.append("  </controller>\n")
    for j in junctions:
        out.append(f'  <junction id="{j["id"]}" name="Junction {j["id"]}">\n')
        for k, (incoming, connecting, lane_in) in enumerate(j["connections"]):
            out.append(
                f'    <connection id="{k}" incomingRoad="{incoming}" connectingRoad="{connecting}" contactPoint="start">'
                f'<laneLink from="{lane_in}" to="-1"/></connection>\n'
            )
        out.extend(
            f'    <controller id="{cid}" type="0" sequence="{seq}"/>\n' for cid, seq in j["controllers"]
        )
        out.append("  </junction>\n")
    out.append("</OpenDRIVE>\n")
    return "".join(out)
