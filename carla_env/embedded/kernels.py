"""Compiled (numba) kernels of the embedded simulator's hot path.

One call per tick each; they loop over vehicles in machine code, so the cost
per tick stays in microseconds for a few hundred vehicles.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit

from carla_env.maps.geometry import lane_pose

INF = np.inf


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
            dx = xyz[j, 0] - xyz[i, 0]
            dy = xyz[j, 1] - xyz[i, 1]
            if dx * dx + dy * dy >= (reach[i] + reach[j]) ** 2:
                continue
            if abs(xyz[j, 2] - xyz[i, 2]) >= half[i, 2] + half[j, 2]:
                continue
            separated = False
            for a in range(4):
                if a == 0:
                    ax, ay = c[i], s[i]
                elif a == 1:
                    ax, ay = -s[i], c[i]
                elif a == 2:
                    ax, ay = c[j], s[j]
                else:
                    ax, ay = -s[j], c[j]
                dist = abs(dx * ax + dy * ay)
                ri = half[i, 0] * abs(c[i] * ax + s[i] * ay) + half[i, 1] * abs(-s[i] * ax + c[i] * ay)
                rj = half[j, 0] * abs(c[j] * ax + s[j] * ay) + half[j, 1] * abs(-s[j] * ax + c[j] * ay)
                if dist > ri + rj:
                    separated = True
                    break
            if not separated:
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
    xyz: np.ndarray  # (N, 3) out: position
    yaw: np.ndarray  # (N,) out: rad


class OtherRoadUsers(NamedTuple):
    """Vehicles outside the traffic model (heroes), located on lanes; read only."""

    lane: np.ndarray  # (M,) int64, -1 off the lanes
    s: np.ndarray  # (M,) m
    v: np.ndarray  # (M,) m/s
    half_len: np.ndarray  # (M,) m


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
            if (
                j >= n
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


@njit(cache=True, inline="always")
def grant_right_of_way(fleet, others, lanes, entry_k, entry_dist, request, stop_gap, model):
    """Requesters in order of distance to their entry are granted their junction run if it conflicts
    with no lane held (by a granted NPC, or an other road user inside the junction or too near it to
    stop at comfortable braking: then every junction lane it may take); a granted vehicle's stop gap
    is lifted. Updates fleet.granted and stop_gap in place."""
    plan, granted, junction = fleet.plan, fleet.granted, lanes.junction
    n, plan_len = plan.shape
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
    for j in range(others.lane.shape[0]):
        lj = others.lane[j]
        if lj < 0:
            continue
        if junction[lj]:
            held[lj] = True
        elif lanes.length[lj] - others.s[j] < others.v[j] * others.v[j] / (2.0 * model.decel) + model.min_gap:
            for k in range(lanes.succ_ptr[lj], lanes.succ_ptr[lj + 1]):
                if junction[lanes.succ_idx[k]]:
                    held[lanes.succ_idx[k]] = True
    held_lanes = np.flatnonzero(held)
    order = req[np.argsort(entry_dist[req], kind="mergesort")]
    for i in order:
        ok = True
        k0 = entry_k[i]
        for k in range(k0, plan_len):
            lane = plan[i, k]
            if not junction[lane]:
                break
            for h in held_lanes:
                if lanes.conflict[lane, h]:
                    ok = False
                    break
            if not ok:
                break
        if ok:
            granted[i] = plan[i, k0]
            stop_gap[i] = INF
            for k in range(k0, plan_len):
                if not junction[plan[i, k]]:
                    break
                held_lanes = np.append(held_lanes, plan[i, k])


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
        x, y, z, h = lane_pose(
            plan[i, 0],
            s[i],
            lanes.lane_start,
            lanes.lane_count,
            lanes.lane_ds,
            lanes.length,
            lanes.points,
            lanes.yaw,
        )
        fleet.xyz[i, 0] = x
        fleet.xyz[i, 1] = y
        fleet.xyz[i, 2] = z
        fleet.yaw[i] = h


@njit(cache=True)
def traffic_step(dt, fleet, others, lanes, model, light_state, rand):
    """Advance every NPC one tick: leaders, junction gates, right of way, then IDM and motion.
    `light_state`: per light, as carla.TrafficLightState values; `rand`: one uniform draw per NPC."""
    offs = plan_offsets(fleet, lanes)
    lead_gap, lead_v, centre_gap = find_leaders(fleet, others, lanes, offs, model.merge_horizon)
    entry_k, entry_dist, stop_gap, request = gate_junction_entries(
        fleet, lanes, light_state, offs, centre_gap, model
    )
    grant_right_of_way(fleet, others, lanes, entry_k, entry_dist, request, stop_gap, model)
    drive(dt, fleet, lanes, offs, lead_gap, lead_v, stop_gap, model, rand)


@njit(cache=True)
def traffic_step_from_fields(dt, fleet, others, lanes, model, light_state, rand):
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
    )
