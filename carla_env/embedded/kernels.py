"""Compiled (numba) kernels of the embedded simulator's hot path.

One call per tick each; they loop over vehicles in machine code, so the cost
per tick stays in microseconds for a few hundred vehicles.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit

from carla_env.maps.geometry import lane_pose
from carla_env.sensors.birdview_kernels import BOX_CORNERS

INF = np.inf


@njit(cache=True, inline="always")
def _boxes_overlap(dx, dy, dz, ci, si, hi, ri0, cj, sj, hj, rj0):
    """Oriented boxes i and j (centre offset dx, dy, dz from i to j; cos/sin of yaw; half extents;
    planar reach) overlap: bounding circles, then height, then the four separating axes."""
    if dx * dx + dy * dy >= (ri0 + rj0) ** 2:
        return False
    if abs(dz) >= hi[2] + hj[2]:
        return False
    for a in range(4):
        if a == 0:
            ax, ay = ci, si
        elif a == 1:
            ax, ay = -si, ci
        elif a == 2:
            ax, ay = cj, sj
        else:
            ax, ay = -sj, cj
        dist = abs(dx * ax + dy * ay)
        ri = hi[0] * abs(ci * ax + si * ay) + hi[1] * abs(-si * ax + ci * ay)
        rj = hj[0] * abs(cj * ax + sj * ay) + hj[1] * abs(-sj * ax + cj * ay)
        if dist > ri + rj:
            return False
    return True


@njit(cache=True)
def overlapping_pairs(xyz, yaw, half):
    """Pairs (i < j) of oriented boxes that overlap: a bounding-circle broad phase, then separating axes."""
    n = xyz.shape[0]
    out_i = np.empty(n * (n - 1) // 2, np.int64)
    out_j = np.empty(n * (n - 1) // 2, np.int64)
    count = 0
    c = np.cos(yaw)
    s = np.sin(yaw)
    reach = np.sqrt(half[:, 0] ** 2 + half[:, 1] ** 2)
    for i in range(n):
        for j in range(i + 1, n):
            if _boxes_overlap(
                xyz[j, 0] - xyz[i, 0],
                xyz[j, 1] - xyz[i, 1],
                xyz[j, 2] - xyz[i, 2],
                c[i],
                s[i],
                half[i],
                reach[i],
                c[j],
                s[j],
                half[j],
                reach[j],
            ):
                out_i[count] = i
                out_j[count] = j
                count += 1
    return out_i[:count], out_j[:count]


@njit(cache=True)
def overlapping_pairs_between(xyz_a, yaw_a, half_a, xyz_b, yaw_b, half_b):
    """Pairs (i in a, j in b) of oriented boxes that overlap (e.g. vehicles and walkers); b is swept
    in x order, so each box of a meets only the boxes of b within reach along x."""
    na, nb = xyz_a.shape[0], xyz_b.shape[0]
    out_i = np.empty(na * nb, np.int64)
    out_j = np.empty(na * nb, np.int64)
    count = 0
    if nb == 0:
        return out_i[:0], out_j[:0]
    ca, sa = np.cos(yaw_a), np.sin(yaw_a)
    cb, sb = np.cos(yaw_b), np.sin(yaw_b)
    ra = np.sqrt(half_a[:, 0] ** 2 + half_a[:, 1] ** 2)
    rb = np.sqrt(half_b[:, 0] ** 2 + half_b[:, 1] ** 2)
    order = np.argsort(xyz_b[:, 0], kind="mergesort")
    xs = xyz_b[order, 0]
    rb_max = rb.max()
    for i in range(na):
        k = np.searchsorted(xs, xyz_a[i, 0] - ra[i] - rb_max)
        while k < nb and xs[k] <= xyz_a[i, 0] + ra[i] + rb_max:
            j = order[k]
            k += 1
            if _boxes_overlap(
                xyz_b[j, 0] - xyz_a[i, 0],
                xyz_b[j, 1] - xyz_a[i, 1],
                xyz_b[j, 2] - xyz_a[i, 2],
                ca[i],
                sa[i],
                half_a[i],
                ra[i],
                cb[j],
                sb[j],
                half_b[j],
                rb[j],
            ):
                out_i[count] = i
                out_j[count] = j
                count += 1
    return out_i[:count], out_j[:count]


# ---------------------------------------------------------------- background traffic
# One tick of traffic is four steps, each its own kernel: find each vehicle's leader, gate it at
# its next junction (light, or wait for right of way), grant right of way, then IDM and move.
# The containers below are struct-of-arrays namedtuples; inside compiled code they are plain
# tuples of arrays. The steps are inlined into traffic_step (inline="always"): one compiled
# function, as the single kernel was (measured within ~5 us a tick of it at 50 NPCs).


class LaneNetwork(NamedTuple):
    """The lane graph as traffic reads it, per town (built once)."""

    length: np.ndarray  # (L,) m
    junction: np.ndarray  # (L,) bool: the lane is inside a junction
    light: np.ndarray  # (L,) int64: the traffic light guarding the lane's end, -1 none
    succ_ptr: np.ndarray  # (L+1,) int64: successors of lane l are succ_idx[succ_ptr[l]:succ_ptr[l+1]]
    succ_idx: np.ndarray  # int64
    curve_speed: np.ndarray  # (L,) m/s the lane's tightest curve allows
    speed_limit: np.ndarray  # (L,) m/s
    conflict: np.ndarray  # (L, L) bool: junction lanes whose paths cross
    lane_start: np.ndarray  # (L,) int64: first centre-line point of the lane
    lane_count: np.ndarray  # (L,) int64: its number of points
    lane_ds: np.ndarray  # (L,) m between its points
    points: np.ndarray  # (P, 3) centre-line points
    yaw: np.ndarray  # (P,) rad


class Fleet(NamedTuple):
    """The NPC vehicles, one row each; the kernels update them in place."""

    plan: np.ndarray  # (N, PLAN) int64: current lane, then the lanes it will take
    s: np.ndarray  # (N,) m along the current lane
    v: np.ndarray  # (N,) m/s
    accel: np.ndarray  # (N,) m/s^2 over the last tick
    half_len: np.ndarray  # (N,) m
    speed_factor: np.ndarray  # (N,) fraction of the speed limit this driver aims for
    granted: np.ndarray  # (N,) int64: junction entry lane it may cross, -1 none
    waited: np.ndarray  # (N,) s standing refused at its junction entry (its place in the queue), 0 none
    xyz: np.ndarray  # (N, 3) out: position
    yaw: np.ndarray  # (N,) out: rad


class OtherRoadUsers(NamedTuple):
    """Vehicles outside the traffic model (heroes), located on lanes; read only."""

    lane: np.ndarray  # (M,) int64, -1 off the lanes
    s: np.ndarray  # (M,) m
    v: np.ndarray  # (M,) m/s
    half_len: np.ndarray  # (M,) m
    holds: np.ndarray  # (M,) bool: inside a junction it holds its lane against right of way (vehicles do;
    # a walker on a crossing there only stops those whose path it is on)


class DriverModel(NamedTuple):
    """IDM and junction behaviour shared by every NPC."""

    accel: float  # m/s^2
    decel: float  # comfortable braking, m/s^2
    headway: float  # s
    min_gap: float  # m bumper to bumper at standstill
    max_decel: float  # physical limit, m/s^2
    request_distance: float  # m before a junction entry where a vehicle asks for right of way
    merge_horizon: float  # m before a merge where vehicles order themselves
    yellow_decel: float  # a vehicle that cannot stop at this deceleration drives through yellow


@njit(cache=True, inline="always")
def _is_successor(a, b, succ_ptr, succ_idx):
    for k in range(succ_ptr[a], succ_ptr[a + 1]):
        if succ_idx[k] == b:
            return True
    return False


@njit(cache=True)
def _pick_successor(lane, r, succ_ptr, succ_idx):
    n = succ_ptr[lane + 1] - succ_ptr[lane]
    return succ_idx[succ_ptr[lane] + min(int(r * n), n - 1)]


@njit(cache=True, inline="always")
def network_pose(lanes, lane, s):
    """(x, y, z, yaw) at distance s along a lane of the LaneNetwork (s clamped to the lane)."""
    return lane_pose(
        lane, s, lanes.lane_start, lanes.lane_count, lanes.lane_ds, lanes.length, lanes.points, lanes.yaw
    )


@njit(cache=True)
def _chain_start(plan_row, granted):
    """Index in the plan where the junction run a granted vehicle holds begins."""
    for k in range(plan_row.shape[0]):
        if plan_row[k] == granted:
            return k
    return 0  # the granted entry lane is behind: the vehicle is inside the junction


@njit(cache=True, inline="always")
def plan_offsets(fleet, lanes):
    """(N, PLAN) distance from each vehicle to the start of each lane of its plan (negative for its own)."""
    n, plan_len = fleet.plan.shape
    offs = np.empty((n, plan_len))
    for i in range(n):
        offs[i, 0] = -fleet.s[i]
        for k in range(1, plan_len):
            offs[i, k] = offs[i, k - 1] + lanes.length[fleet.plan[i, k - 1]]
    return offs


@njit(cache=True, inline="always")
def find_leaders(fleet, others, lanes, offs, merge_horizon):
    """Each NPC's leader among NPCs and other road users: (bumper gap, leader speed, centre distance).

    A leader is on the vehicle's plan ahead of it, just diverged onto a sibling successor, or
    merging into its next lane from nearer the merge. No leader: gap and distance are inf."""
    plan, s, v, half_len = fleet.plan, fleet.s, fleet.v, fleet.half_len
    n, plan_len = plan.shape
    m = others.lane.shape[0]
    lead_gap = np.full(n, INF)
    lead_v = v.copy()
    centre_gap = np.full(n, INF)
    for i in range(n):
        rem_i = lanes.length[plan[i, 0]] - s[i]
        best, best_v, best_h = INF, v[i], 0.0
        for j in range(n + m):
            if j == i:
                continue
            if j < n:
                lj, sj, vj, hj = plan[j, 0], s[j], v[j], half_len[j]
            else:
                lj, sj, vj, hj = others.lane[j - n], others.s[j - n], others.v[j - n], others.half_len[j - n]
            d = INF
            for k in range(plan_len):
                if lj == plan[i, k]:
                    dk = offs[i, k] + sj
                    if dk > 0 and dk < d:
                        d = dk
            # Just diverged onto a sibling successor lane: still in front of us.
            if (
                sj < 8.0
                and lj != plan[i, 1]
                and _is_successor(plan[i, 0], lj, lanes.succ_ptr, lanes.succ_idx)
            ):
                d = min(d, offs[i, 1] + sj)
            # Merging into the same next lane: whoever is nearer the merge goes first.
            if j < n and plan[j, 1] == plan[i, 1] and plan[j, 0] != plan[i, 0] and rem_i < merge_horizon:
                rem_j = lanes.length[plan[j, 0]] - s[j]
                if rem_j < rem_i or (rem_j == rem_i and j < i):
                    d = min(d, rem_i - rem_j + 1e-3)
            # A hero (no plan known) on a junction lane that leads only into our next lane merges too.
            # A walker on a crossing there does not (it holds no lane): it stops only those whose path
            # it is on, which the plan check above finds.
            if (
                j >= n
                and others.holds[j - n]
                and lj >= 0
                and lj != plan[i, 0]
                and lanes.junction[lj]
                and lanes.succ_ptr[lj + 1] - lanes.succ_ptr[lj] == 1
                and lanes.succ_idx[lanes.succ_ptr[lj]] == plan[i, 1]
                and rem_i < merge_horizon
            ):
                rem_j = lanes.length[lj] - sj
                if rem_j < rem_i:
                    d = min(d, rem_i - rem_j + 1e-3)
            if d - hj < best - best_h:
                best, best_v, best_h = d, vj, hj
        centre_gap[i] = best
        if best < INF:
            lead_gap[i] = best - half_len[i] - best_h
            lead_v[i] = best_v
    return lead_gap, lead_v, centre_gap


@njit(cache=True, inline="always")
def gate_junction_entries(fleet, lanes, light_state, offs, centre_gap, model):
    """At each NPC's next junction entry: stop for a red (or a yellow it can stop for), else wait at
    the entry until granted right of way, asking for it when near and first in line.

    Returns (plan index of the entry or 0 for none, distance to it, gap to stop in or inf, asks?)."""
    plan, v, half_len = fleet.plan, fleet.v, fleet.half_len
    n, plan_len = plan.shape
    entry_k = np.zeros(n, np.int64)
    entry_dist = np.full(n, INF)
    stop_gap = np.full(n, INF)
    request = np.zeros(n, np.bool_)
    for i in range(n):
        for k in range(1, plan_len):
            if lanes.junction[plan[i, k]] and not lanes.junction[plan[i, k - 1]]:
                entry_k[i] = k
                entry_dist[i] = offs[i, k]
                break
        if entry_k[i] == 0:
            continue
        k = entry_k[i]
        guard = lanes.light[plan[i, k - 1]]
        state = light_state[guard] if guard >= 0 else 2
        can_stop = entry_dist[i] - half_len[i] > v[i] * v[i] / (2.0 * model.yellow_decel)
        light_stop = state == 0 or (state == 1 and can_stop)
        passed = fleet.granted[i] == plan[i, k]
        if passed:
            continue
        if light_stop:
            stop_gap[i] = entry_dist[i] - half_len[i]
            continue
        stop_gap[i] = entry_dist[i] - half_len[i]  # wait at the entry until granted
        near = entry_dist[i] < model.request_distance + v[i] * v[i] / (2.0 * model.decel)
        if near and centre_gap[i] > entry_dist[i]:
            request[i] = True
    return entry_k, entry_dist, stop_gap, request


@njit(cache=True)
def _hold_junction_run(first, held, lanes):
    """Mark `first` and every junction lane reachable from it through junction lanes: where a road
    user not driven by this model (whose plan is unknown) may still go before it leaves the junction.
    A junction path can be several chained lanes; holding only the current one let an NPC be granted
    the crossing the hero was about to drive onto."""
    seen = np.zeros(lanes.length.shape[0], np.bool_)
    stack = np.empty(lanes.length.shape[0], np.int64)
    stack[0], top, seen[first] = first, 1, True
    while top:
        top -= 1
        lane = stack[top]
        held[lane] = True
        for k in range(lanes.succ_ptr[lane], lanes.succ_ptr[lane + 1]):
            nxt = lanes.succ_idx[k]
            if lanes.junction[nxt] and not seen[nxt]:
                seen[nxt] = True
                stack[top] = nxt
                top += 1


# m: junction lanes of one entry this near each other at a road user's s are still one path
SIBLING_OVERLAP = 1.5


@njit(cache=True)
def _hold_where_it_may_drive(lane, s, held, lanes):
    """For a road user inside a junction on `lane` at `s`: hold that lane's run, and the runs of the
    lanes leaving the same entry that still overlap it there. Near an entry the straight and turning
    lanes lie on top of each other and the lane match may pick either (seen on Town10HD: the hero
    matched to its straight lane while taking the turn, and an NPC was granted the crossing it turned into)."""
    _hold_junction_run(lane, held, lanes)
    x, y, _, _ = network_pose(lanes, lane, s)
    for p in range(lanes.length.shape[0]):
        if not _is_successor(p, lane, lanes.succ_ptr, lanes.succ_idx):
            continue
        for k in range(lanes.succ_ptr[p], lanes.succ_ptr[p + 1]):
            m = lanes.succ_idx[k]
            if m == lane or held[m] or not lanes.junction[m]:
                continue
            mx, my, _, _ = network_pose(lanes, m, s)  # clamped to m's end
            if (mx - x) ** 2 + (my - y) ** 2 < SIBLING_OVERLAP**2:
                _hold_junction_run(m, held, lanes)


# m/s: a refused requester this slow stands at its entry and queues for the junction (first come,
# first served; the Traffic Manager's tickets at a junction without lights also go by arrival; at lit
# entries it has no such queue: ours keeps a permissive turn from starving)
WAITING_SPEED = 0.5


@njit(cache=True, inline="always")
def _conflicts_with(plan_i, k0, lanes, held_lanes):
    """The junction run of a plan from k0 crosses one of `held_lanes`."""
    for k in range(k0, plan_i.shape[0]):
        lane = plan_i[k]
        if not lanes.junction[lane]:
            break
        for h in held_lanes:
            if lanes.conflict[lane, h]:
                return True
    return False


@njit(cache=True, inline="always")
def _append_run(plan_i, k0, lanes, out):
    for k in range(k0, plan_i.shape[0]):
        if not lanes.junction[plan_i[k]]:
            break
        out = np.append(out, plan_i[k])
    return out


@njit(cache=True, inline="always")
def grant_right_of_way(dt, fleet, others, lanes, entry_k, entry_dist, request, stop_gap, model):
    """Requesters are granted their junction run if it conflicts with no lane held (by a granted NPC,
    or an other road user inside the junction or too near it to stop at comfortable braking: then every
    junction lane it may take) nor reserved; a granted vehicle's stop gap is lifted. First come, first
    served: those standing refused at their entry go first, longest waiting first, then the others by
    distance to their entry; one refused for a lane a granted NPC holds reserves its run against those
    after it, so a stream on a crossing lane cannot starve it (one at an entry without a light, only
    against those without one: a green light goes first). Updates fleet.granted, fleet.waited and
    stop_gap in place."""
    plan, granted, waited, junction = fleet.plan, fleet.granted, fleet.waited, lanes.junction
    n, plan_len = plan.shape
    for i in range(n):
        if not request[i]:
            waited[i] = 0.0
    req = np.flatnonzero(request)
    if req.shape[0] == 0:
        return
    held = np.zeros(lanes.length.shape[0], np.bool_)
    for i in range(n):
        if granted[i] >= 0:
            k0 = _chain_start(plan[i], granted[i])
            for k in range(k0, plan_len):
                if not junction[plan[i, k]]:
                    break
                held[plan[i, k]] = True
    npc_lanes = np.flatnonzero(held)
    held[:] = False
    for j in range(others.lane.shape[0]):
        lj = others.lane[j]
        if lj < 0 or not others.holds[j]:  # walkers hold no junction lane (they stop who they block)
            continue
        if junction[lj]:
            _hold_where_it_may_drive(lj, others.s[j], held, lanes)
        elif lanes.length[lj] - others.s[j] < others.v[j] * others.v[j] / (2.0 * model.decel) + model.min_gap:
            for k in range(lanes.succ_ptr[lj], lanes.succ_ptr[lj + 1]):
                if junction[lanes.succ_idx[k]]:
                    _hold_junction_run(lanes.succ_idx[k], held, lanes)
    other_lanes = np.flatnonzero(held)
    reserved = np.zeros(0, np.int64)
    reserved_unlit = np.zeros(0, np.int64)  # by waiters at an entry without a light
    order = req[np.argsort(entry_dist[req], kind="mergesort")]
    order = order[np.argsort(-waited[order], kind="mergesort")]
    for i in order:
        k0 = entry_k[i]
        for_npc = _conflicts_with(plan[i], k0, lanes, npc_lanes)
        lit = lanes.light[plan[i, k0 - 1]] >= 0  # it asks at green (or a yellow it cannot stop for)
        if (
            for_npc
            or _conflicts_with(plan[i], k0, lanes, other_lanes)
            or _conflicts_with(plan[i], k0, lanes, reserved)
            or (not lit and _conflicts_with(plan[i], k0, lanes, reserved_unlit))
        ):
            if fleet.v[i] < WAITING_SPEED:
                waited[i] += dt
                # Only a wait on an NPC's hold, which ends as it drives through, reserves: one behind a
                # hero (which may stand for long) or behind another reservation would spread the wait.
                # An NPC stalled in the junction still makes its waiters reserve: without that (tried)
                # Town10HD's autopilot lost a point to starved turns (docs/results).
                # A green light is not held up by a side entry without one (seen on Town10HD: a green
                # phase lost to a light-less entry's waiter), as the Traffic Manager drives on at green.
                if for_npc and lit:
                    reserved = _append_run(plan[i], k0, lanes, reserved)
                elif for_npc:
                    reserved_unlit = _append_run(plan[i], k0, lanes, reserved_unlit)
            else:
                waited[i] = 0.0
            continue
        granted[i] = plan[i, k0]
        waited[i] = 0.0
        stop_gap[i] = INF
        npc_lanes = _append_run(plan[i], k0, lanes, npc_lanes)


@njit(cache=True, inline="always")
def drive(dt, fleet, lanes, offs, lead_gap, lead_v, stop_gap, model, rand):
    """IDM against the nearer of the leader and the stop line, then move along the plan: a vehicle
    that runs off its lane's end takes the next, and a random successor (from `rand`) joins the plan.
    Writes speed, acceleration, s, plan, granted, and the pose (xyz, yaw) in place."""
    plan, s, v, granted = fleet.plan, fleet.s, fleet.v, fleet.granted
    n, plan_len = plan.shape
    a_max, b_comf, headway, s0 = model.accel, model.decel, model.headway, model.min_gap
    sqrt_ab = 2.0 * np.sqrt(a_max * b_comf)
    for i in range(n):
        vi = v[i]
        v0 = lanes.speed_limit[plan[i, 0]] * fleet.speed_factor[i]
        v0 = min(v0, lanes.curve_speed[plan[i, 0]])
        if offs[i, 1] < 25.0:
            v0 = min(v0, lanes.curve_speed[plan[i, 1]])
        inter = 0.0
        if lead_gap[i] < INF:
            s_star = s0 + max(0.0, vi * headway + vi * (vi - lead_v[i]) / sqrt_ab)
            inter = (s_star / max(lead_gap[i], 0.1)) ** 2
        if stop_gap[i] < INF:
            s_stop = s0 + vi * headway + vi * vi / sqrt_ab
            inter = max(inter, (s_stop / max(stop_gap[i], 0.1)) ** 2)
        a = a_max * (1.0 - (vi / max(v0, 0.1)) ** 4 - inter)
        a = min(max(a, -model.max_decel), a_max)
        nv = max(vi + a * dt, 0.0)
        fleet.accel[i] = (nv - vi) / dt
        v[i] = nv
        s[i] += nv * dt
        r = rand[i]
        while s[i] >= lanes.length[plan[i, 0]]:
            old = plan[i, 0]
            s[i] -= lanes.length[old]
            for k in range(plan_len - 1):
                plan[i, k] = plan[i, k + 1]
            plan[i, plan_len - 1] = _pick_successor(plan[i, plan_len - 2], r, lanes.succ_ptr, lanes.succ_idx)
            r = (r * 9301.0 + 0.4929) % 1.0
            if lanes.junction[old] and not lanes.junction[plan[i, 0]]:
                granted[i] = -1
        x, y, z, h = network_pose(lanes, plan[i, 0], s[i])
        fleet.xyz[i, 0] = x
        fleet.xyz[i, 1] = y
        fleet.xyz[i, 2] = z
        fleet.yaw[i] = h


# CARLA's Traffic Manager brakes for any vehicle in its path, whatever lane it is on (its collision
# stage); lane rules alone let an NPC drive into a hero standing across its way in a junction.
OBSTACLE_MARGIN = 0.3  # m around an obstacle's box that a path counts as blocked
NPC_HALF_WIDTH = 1.0  # m: an NPC's half width, for the box swept along its path
PATH_STEP = 1.0  # m between the path points checked
OBSTACLE_LOOKAHEAD = 5.0  # m checked beyond the braking distance and the standstill gap
VERTICAL_SEPARATION = 4.0  # m: boxes this far apart in height do not meet (a bridge; the TM's threshold)


@njit(cache=True, inline="always")
def brake_for_obstacles(fleet, obstacles, lanes, offs, lead_gap, lead_v, centre_gap, model):
    """Each NPC treats the first obstacle box (heroes: x, y, z, yaw, half length, half width, speed
    along their heading) that its own box would meet along its plan, within its braking distance and a
    few metres, as a leader: the gap is how far it may move first; the speed, the obstacle's along the
    path there, never negative. The centre gap is lowered too, so an NPC held back by one does not ask
    for a junction beyond it."""
    n, plan_len = fleet.plan.shape
    npc_half = np.array([0.0, NPC_HALF_WIDTH, VERTICAL_SEPARATION / 2])
    box_half = np.array([0.0, 0.0, VERTICAL_SEPARATION / 2])
    for o in range(obstacles.shape[0]):
        ox, oy, oz, oyaw, ohl, ohw, ov = obstacles[o]
        c, sn = np.cos(oyaw), np.sin(oyaw)
        box_half[0], box_half[1] = ohl + OBSTACLE_MARGIN, ohw + OBSTACLE_MARGIN
        box_reach = np.hypot(box_half[0], box_half[1])
        for i in range(n):
            vi, hl = fleet.v[i], fleet.half_len[i]
            npc_half[0] = hl
            npc_reach = np.hypot(hl, NPC_HALF_WIDTH)
            reach = min(vi * vi / (2.0 * model.decel) + model.min_gap + OBSTACLE_LOOKAHEAD, lead_gap[i])
            dx, dy = ox - fleet.xyz[i, 0], oy - fleet.xyz[i, 1]
            if dx * dx + dy * dy > (reach + npc_reach + box_reach) ** 2:
                continue
            if dx * np.cos(fleet.yaw[i]) + dy * np.sin(fleet.yaw[i]) <= 0.0:
                continue  # behind it (the TM looks ahead): one close on its tail must not stop it
            end = offs[i, plan_len - 1] + lanes.length[fleet.plan[i, plan_len - 1]]
            d, k = 0.0, 0
            while d <= min(reach, end):
                while k + 1 < plan_len and offs[i, k + 1] <= d:
                    k += 1
                x, y, z, h = network_pose(lanes, fleet.plan[i, k], d - offs[i, k])
                if _boxes_overlap(
                    ox - x,
                    oy - y,
                    oz - z,
                    np.cos(h),
                    np.sin(h),
                    npc_half,
                    npc_reach,
                    c,
                    sn,
                    box_half,
                    box_reach,
                ):
                    if d < lead_gap[i]:
                        lead_gap[i] = d
                        lead_v[i] = max(ov * np.cos(oyaw - h), 0.0)
                        centre_gap[i] = min(centre_gap[i], d + hl)
                    break
                d += PATH_STEP


@njit(cache=True)
def traffic_step(dt, fleet, others, lanes, model, light_state, rand, obstacles):
    """Advance every NPC one tick: leaders, obstacles on the path, junction gates, right of way, then IDM
    and motion. `light_state`: per light, as carla.TrafficLightState values; `rand`: one uniform draw per
    NPC; `obstacles`: (K, 7) boxes of vehicles outside the model (x, y, z, yaw, half length, half width,
    speed along their heading)."""
    offs = plan_offsets(fleet, lanes)
    lead_gap, lead_v, centre_gap = find_leaders(fleet, others, lanes, offs, model.merge_horizon)
    brake_for_obstacles(fleet, obstacles, lanes, offs, lead_gap, lead_v, centre_gap, model)
    entry_k, entry_dist, stop_gap, request = gate_junction_entries(
        fleet, lanes, light_state, offs, centre_gap, model
    )
    grant_right_of_way(dt, fleet, others, lanes, entry_k, entry_dist, request, stop_gap, model)
    drive(dt, fleet, lanes, offs, lead_gap, lead_v, stop_gap, model, rand)


@njit(cache=True)
def road_users(yaw, lane_yaw, lane, s, v, half, x, y, z, walker_lane, walker_s, walker_half_length):
    """What NPC traffic yields to this tick, in one call (numpy on these few rows cost ~15 small calls):
    heroes heading along their lane (within 60 degrees), then walkers in the way, standing and holding
    no junction lane, as OtherRoadUsers' fields (lane, s, speed, half length, holds); and every hero's
    box as an obstacle (x, y, z, yaw, half length, half width, speed along the heading)."""
    heroes = yaw.shape[0]
    along = np.empty(heroes, np.bool_)
    n = walker_lane.shape[0]
    for r in range(heroes):
        along[r] = abs(np.remainder(yaw[r] - lane_yaw[r] + np.pi, 2 * np.pi) - np.pi) < np.pi / 3
        n += along[r]
    lanes = np.empty(n, np.int64)
    at = np.empty(n)
    speed = np.empty(n)
    half_len = np.empty(n)
    holds = np.empty(n, np.bool_)
    k = 0
    for r in range(heroes):
        if along[r]:
            lanes[k], at[k], speed[k], half_len[k] = np.int64(lane[r]), s[r], abs(v[r]), half[r, 0]
            holds[k] = True
            k += 1
    for i in range(walker_lane.shape[0]):
        lanes[k], at[k], speed[k], half_len[k] = walker_lane[i], walker_s[i], 0.0, walker_half_length
        holds[k] = False
        k += 1
    obstacles = np.empty((heroes, 7))
    for r in range(heroes):
        obstacles[r, 0], obstacles[r, 1], obstacles[r, 2], obstacles[r, 3] = x[r], y[r], z[r], yaw[r]
        obstacles[r, 4], obstacles[r, 5], obstacles[r, 6] = half[r, 0], half[r, 1], v[r]
    return lanes, at, speed, half_len, holds, obstacles


@njit(cache=True)
def traffic_step_from_fields(dt, fleet, others, lanes, model, light_state, rand, obstacles):
    """traffic_step with each container passed as a plain tuple of its fields, the one call per tick:
    numba types plain tuples in C but namedtuples in Python, ~15 us a call (the whole 50-NPC step
    computes in ~25 us)."""
    traffic_step(
        dt,
        Fleet(*fleet),
        OtherRoadUsers(*others),
        LaneNetwork(*lanes),
        DriverModel(*model),
        light_state,
        rand,
        obstacles,
    )


# ---------------------------------------------------------------- walkers
# A walker follows its route's nodes along the walk graph (carla_env.maps.sidewalks); before a crossing
# it stops and checks for vehicles, as CARLA's walker manager does (WalkerEventStopAndCheck).
IDLE, WALKING, CHECKING, STEERED = 0, 1, 2, 3  # walker modes; STEERED: by carla.WalkerControl
CHECK_TIMEOUT = 5.0  # s waiting at a crossing before the walker takes a new route (CARLA's timeout)
CHECK_RADIUS = 15.0  # m: a vehicle moving towards the crossing this near it keeps it waiting
WAITING_GAP = 4.0  # m: so does one standing with its front this near, facing it (its turn to go)
NON_SIDEWALK = 0  # edge kind of sidewalks (crossings and roads are the others)
# CARLA's walker crowd holds every vehicle as an obstacle: its box grown by 0.8 m, 1.0 m ahead
# (Navigation::AddOrUpdateVehicle); walkers steer clear of it instead of walking into a standing car.
VEHICLE_CLEARANCE = 0.8  # m around a vehicle's box
VEHICLE_CLEARANCE_AHEAD = 0.2  # m more ahead of it
UNBLOCK_TIME = 4.0  # s a walker held on a sidewalk waits before taking a new route (AGENT_UNBLOCK_TIME)
# s a walker held on a crossing waits before it turns back to the kerb it came from. CARLA gives every
# walker that moved under 0.5 m in a 4 s window a new route wherever it stands (Navigation::UpdateCrowd),
# so one held on a crossing goes elsewhere 4-8 s on; waiting for ever there, it and a car stopped across
# its way waited for each other until the episode's end (Town10HD, docs/results).
CROSSING_UNBLOCK_TIME = 2 * UNBLOCK_TIME
KERB_REACH = 0.5  # m from the node it left: a walker held this near it takes a new route instead
# m: a vehicle whose box comes this near the crossing line keeps a walker waiting at the kerb; at least
# the clearance, or a walker stepping on behind a car's bumper would be held in the road while it stands.
CHECK_MARGIN = VEHICLE_CLEARANCE + VEHICLE_CLEARANCE_AHEAD
PASSED = 2.5  # m beyond a lane's centre line: a walker this far past it no longer holds that lane


class WalkerState(NamedTuple):
    """The walkers, one row each; the kernel updates them in place."""

    xyz: np.ndarray  # (W, 3) ground point under the walker
    yaw: np.ndarray  # (W,) rad
    v: np.ndarray  # (W,) m/s over the last tick
    max_speed: np.ndarray  # (W,) m/s
    node_from: np.ndarray  # (W,) int64: the walk-graph node it left (or stands at)
    node_to: np.ndarray  # (W,) int64: the node it walks to
    edge: np.ndarray  # (W,) int64: the edge between them, -1 none
    goal: np.ndarray  # (W,) int64: its route's last node, -1 none
    mode: np.ndarray  # (W,) int64: IDLE, WALKING, CHECKING or STEERED
    wait: np.ndarray  # (W,) s spent checking at the current crossing, or held by a vehicle
    steer_dir: np.ndarray  # (W, 3) carla.WalkerControl direction (unit)
    steer_speed: np.ndarray  # (W,) its speed
    reroute: np.ndarray  # (W,) bool out: reached its goal, timed out at a crossing or held on a sidewalk


class WalkNetwork(NamedTuple):
    node_xyz: np.ndarray
    adj_ptr: np.ndarray
    adj_node: np.ndarray
    adj_edge: np.ndarray
    edge_kind: np.ndarray
    cross_ptr: np.ndarray
    cross_lane: np.ndarray
    cross_s: np.ndarray
    cross_at: np.ndarray
    edge_a: np.ndarray


@njit(cache=True, inline="always")
def _crossing_clear(a, b, veh_xyz, veh_yaw, veh_v, veh_half_len):
    """No vehicle on the crossing a-b, waiting at it, or moving towards it within CHECK_RADIUS."""
    ux, uy = b[0] - a[0], b[1] - a[1]
    length2 = max(ux * ux + uy * uy, 1e-9)
    for j in range(veh_xyz.shape[0]):
        px, py = veh_xyz[j, 0] - a[0], veh_xyz[j, 1] - a[1]
        t = min(max((px * ux + py * uy) / length2, 0.0), 1.0)
        dx, dy = px - t * ux, py - t * uy  # from the crossing's nearest point to the vehicle
        dist = np.sqrt(dx * dx + dy * dy)
        if dist < veh_half_len[j] + CHECK_MARGIN:
            return False
        towards = -(dx * np.cos(veh_yaw[j]) + dy * np.sin(veh_yaw[j])) > 0.0
        if towards and (dist < veh_half_len[j] + WAITING_GAP or (veh_v[j] > 0.5 and dist < CHECK_RADIUS)):
            return False
    return True


@njit(cache=True, inline="always")
def _clearance_depth(x, y, veh_xyz, veh_yaw, veh_half):
    """How deep (x, y) lies in the clearance around the vehicles, in metres (the deepest; <= 0: clear)."""
    deepest = -INF
    for j in range(veh_xyz.shape[0]):
        dx, dy = x - veh_xyz[j, 0], y - veh_xyz[j, 1]
        reach = veh_half[j, 0] + veh_half[j, 1] + VEHICLE_CLEARANCE + VEHICLE_CLEARANCE_AHEAD
        if dx * dx + dy * dy > reach * reach:
            continue
        c, s = np.cos(veh_yaw[j]), np.sin(veh_yaw[j])
        ahead, left = dx * c + dy * s, abs(-dx * s + dy * c)
        along = veh_half[j, 0] + VEHICLE_CLEARANCE + (VEHICLE_CLEARANCE_AHEAD if ahead > 0 else 0.0)
        deepest = max(deepest, min(along - abs(ahead), veh_half[j, 1] + VEHICLE_CLEARANCE - left))
    return deepest


@njit(cache=True, inline="always")
def _held_by_vehicle(w, i, net, step, veh_xyz, veh_yaw, veh_half):
    """Whether walker i's next `step` metres towards its next node go deeper into a vehicle's
    clearance (a walker already inside may step out)."""
    t = net.node_xyz[w.node_to[i]]
    x, y = w.xyz[i, 0], w.xyz[i, 1]
    dx, dy = t[0] - x, t[1] - y
    d = np.sqrt(dx * dx + dy * dy)
    if d < 1e-9:
        return False
    f = min(step / d, 1.0)
    after = _clearance_depth(x + dx * f, y + dy * f, veh_xyz, veh_yaw, veh_half)
    return after > 0.0 and after > _clearance_depth(x, y, veh_xyz, veh_yaw, veh_half) + 1e-9


@njit(cache=True, inline="always")
def _edge_between(net, a, b):
    for k in range(net.adj_ptr[a], net.adj_ptr[a + 1]):
        if net.adj_node[k] == b:
            return net.adj_edge[k]
    return -1


@njit(cache=True)
def walker_step(dt, w, net, veh_xyz, veh_yaw, veh_v, veh_half, next_hop, out_lane, out_s):
    """Advance every walker one tick. A walker on a crossing is written to (out_lane, out_s) once for each
    driving lane the crossing spans that it has not yet crossed, for traffic to yield to (from the
    moment it steps on: vehicles still far enough to stop, as the stop-and-check made sure); returns
    how many were written. A walker whose step would take it into a vehicle's clearance stands; held
    UNBLOCK_TIME on a sidewalk it takes a new route; held CROSSING_UNBLOCK_TIME on a crossing it turns
    back along it, still holding the lanes ahead of it, to check again at the kerb it came from (or, if
    it is still at that kerb, takes a new route)."""
    count = 0
    veh_half_len = veh_half[:, 0]
    for i in range(w.xyz.shape[0]):
        w.reroute[i] = False
        mode = w.mode[i]
        if mode == STEERED:
            sp = w.steer_speed[i]
            w.xyz[i, 0] += w.steer_dir[i, 0] * sp * dt
            w.xyz[i, 1] += w.steer_dir[i, 1] * sp * dt
            w.v[i] = sp
            if sp > 0.0 and (w.steer_dir[i, 0] != 0.0 or w.steer_dir[i, 1] != 0.0):
                w.yaw[i] = np.arctan2(w.steer_dir[i, 1], w.steer_dir[i, 0])
            continue
        if mode == IDLE:
            w.v[i] = 0.0
            continue
        if mode == CHECKING:
            w.v[i] = 0.0
            a, b = net.node_xyz[w.node_from[i]], net.node_xyz[w.node_to[i]]
            if _crossing_clear(a, b, veh_xyz, veh_yaw, veh_v, veh_half_len):
                w.mode[i] = WALKING
                w.wait[i] = 0.0  # time spent checking is not time held on the crossing
            else:
                w.wait[i] += dt
                if w.wait[i] > CHECK_TIMEOUT:
                    w.reroute[i] = True
                continue
        budget = w.max_speed[i] * dt
        moved = 0.0
        if _held_by_vehicle(w, i, net, budget, veh_xyz, veh_yaw, veh_half):
            budget = 0.0
            w.wait[i] += dt
            e = w.edge[i]
            if w.wait[i] > UNBLOCK_TIME and (e < 0 or net.edge_kind[e] == NON_SIDEWALK):
                w.reroute[i] = True
            elif w.wait[i] > CROSSING_UNBLOCK_TIME and e >= 0:
                w.wait[i] = 0.0
                n = net.node_xyz[w.node_from[i]]
                if (n[0] - w.xyz[i, 0]) ** 2 + (n[1] - w.xyz[i, 1]) ** 2 < KERB_REACH**2:
                    w.reroute[i] = True  # still at its kerb: a new route, as after a timed-out check
                else:  # back to the node it left, along the crossing it still holds lanes of
                    w.node_to[i] = w.node_from[i]
                    w.yaw[i] = np.arctan2(n[1] - w.xyz[i, 1], n[0] - w.xyz[i, 0])
        else:
            w.wait[i] = 0.0
        while budget > 1e-9:
            t = net.node_xyz[w.node_to[i]]
            dx, dy, dz = t[0] - w.xyz[i, 0], t[1] - w.xyz[i, 1], t[2] - w.xyz[i, 2]
            d = np.sqrt(dx * dx + dy * dy)
            if d > budget:
                f = budget / d
                w.xyz[i, 0] += dx * f
                w.xyz[i, 1] += dy * f
                w.xyz[i, 2] += dz * f
                moved += budget
                break
            w.xyz[i, 0], w.xyz[i, 1], w.xyz[i, 2] = t[0], t[1], t[2]
            budget -= d
            moved += d
            node = w.node_to[i]
            w.node_from[i] = node
            nxt = next_hop[i, node] if node != w.goal[i] else -1
            if nxt < 0:  # at its goal (or cut off from it): a new route, as CARLA's walkers take
                w.reroute[i] = True
                w.edge[i] = -1
                break
            e = _edge_between(net, node, nxt)
            w.node_to[i] = nxt
            w.edge[i] = e
            n = net.node_xyz[nxt]
            if n[0] != t[0] or n[1] != t[1]:  # facing along the edge, set once per edge
                w.yaw[i] = np.arctan2(n[1] - t[1], n[0] - t[0])
            if net.edge_kind[e] != NON_SIDEWALK:
                w.mode[i] = CHECKING
                w.wait[i] = 0.0
                break
        w.v[i] = moved / dt
        e = w.edge[i]
        if w.mode[i] == WALKING and e >= 0 and net.edge_kind[e] != NON_SIDEWALK:
            a = net.node_xyz[net.edge_a[e]]
            at = np.sqrt((w.xyz[i, 0] - a[0]) ** 2 + (w.xyz[i, 1] - a[1]) ** 2)  # along the crossing
            towards_b = w.node_to[i] != net.edge_a[e]
            for k in range(net.cross_ptr[e], net.cross_ptr[e + 1]):
                behind = at - net.cross_at[k] if towards_b else net.cross_at[k] - at
                if behind > PASSED:  # lanes it has crossed are free again
                    continue
                if count < out_lane.shape[0]:
                    out_lane[count] = net.cross_lane[k]
                    out_s[count] = net.cross_s[k]
                    count += 1
    return count


@njit(cache=True)
def walkers_tick_from_fields(
    dt, w, walker_half, net, veh_xyz, veh_yaw, veh_half, veh_v, next_hop, out_lane, out_s
):
    """One compiled call a tick: walker_step (containers as plain tuples of their fields, see
    traffic_step_from_fields), then the vehicle-walker contacts after the move.
    Returns (rows written to out_lane/out_s, vehicle indices, walker indices)."""
    state = WalkerState(*w)
    count = walker_step(
        dt, state, WalkNetwork(*net), veh_xyz, veh_yaw, veh_v, veh_half, next_hop, out_lane, out_s
    )
    i, j = overlapping_pairs_between(veh_xyz, veh_yaw, veh_half, state.xyz, state.yaw, walker_half)
    return count, i, j


@njit(cache=True)
def painted_markings(
    box,
    lane,
    s,
    lane_start,
    lane_count,
    lane_ds,
    lane_length,
    lane_width,
    points,
    yaws,
    mark_left,
    mark_right,
    unmarked,
):
    """The paint a car's box is over, as CARLA's lane-invasion sensor tests its corners: the (right,
    left) marking codes of the first corner (in box_corners' order) over that edge's paint, -1 for
    none. `box`: x, y, yaw, half_length, half_width; `lane`, `s`: where its centre is; `unmarked`: the
    marking code of no paint. Each corner is measured against the
    centre-line point abreast of it: on a bend, the tangent at the car's centre puts a corner a car
    length ahead d^2/2R further out than the lane's edge. Corners beyond the lane's ends are not tested
    (the paint there belongs to the next lane)."""
    x, y, yaw, hl, hw = box[0], box[1], box[2], box[3], box[4]
    c, sn = np.cos(yaw), np.sin(yaw)
    k = min(int(s / lane_ds[lane]), lane_count[lane] - 1)
    idx = lane_start[lane] + k
    cl, sl = np.cos(yaws[idx]), np.sin(yaws[idx])
    half_w = lane_width[lane] / 2
    right, left = -1, -1
    for i in range(4):
        f = BOX_CORNERS[i, 0] * hl
        r = BOX_CORNERS[i, 1] * hw
        cx = x + f * c - r * sn
        cy = y + f * sn + r * c
        ahead = (cx - points[idx, 0]) * cl + (cy - points[idx, 1]) * sl
        kc = min(max(k + np.int64(np.rint(ahead / lane_ds[lane])), 0), lane_count[lane] - 1)
        at = lane_start[lane] + kc
        dx, dy = cx - points[at, 0], cy - points[at, 1]
        ca, sa = np.cos(yaws[at]), np.sin(yaws[at])
        along = kc * lane_ds[lane] + dx * ca + dy * sa
        lateral = -dx * sa + dy * ca  # > 0: right of the lane centre
        if along < 0.0 or along > lane_length[lane]:
            continue
        if right < 0 and lateral > half_w and mark_right[at] != unmarked:
            right = mark_right[at]
        if left < 0 and lateral < -half_w and mark_left[at] != unmarked:
            left = mark_left[at]
    return right, left


@njit(cache=True)
def carla_boxes(xy, yaw, half):
    """(N, 5) boxes x, y, yaw (rad), half length, half width as the CARLA API gives them: its types
    store float32, and yaw in degrees."""
    out = np.empty((xy.shape[0], 5))
    for i in range(xy.shape[0]):
        out[i, 0] = np.float64(np.float32(xy[i, 0]))
        out[i, 1] = np.float64(np.float32(xy[i, 1]))
        out[i, 2] = np.radians(np.float64(np.float32(np.degrees(yaw[i]))))
        out[i, 3] = np.float64(np.float32(half[i, 0]))
        out[i, 4] = np.float64(np.float32(half[i, 1]))
    return out


@njit(cache=True)
def scene_boxes(xy, yaw, half, speed, skip):
    """carla_boxes of every row but `skip` (-1: none), with each row's velocity (speed along its yaw):
    a Scene's boxes and velocities in one call. Also returns the skipped row's box (zeros if none)."""
    boxes = carla_boxes(xy, yaw, half)
    n = xy.shape[0] - (1 if 0 <= skip < xy.shape[0] else 0)
    out = np.empty((n, 5))
    velocity = np.empty((n, 2))
    k = 0
    for i in range(xy.shape[0]):
        if i == skip:
            continue
        out[k] = boxes[i]
        velocity[k, 0] = speed[i] * np.cos(yaw[i])
        velocity[k, 1] = speed[i] * np.sin(yaw[i])
        k += 1
    skipped = boxes[skip].copy() if 0 <= skip < xy.shape[0] else np.zeros(5)
    return out, velocity, skipped
