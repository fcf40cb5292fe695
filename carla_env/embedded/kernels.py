"""Compiled (numba) kernels of the embedded simulator's hot path.

One call per tick each; they loop over vehicles in machine code, so the cost
per tick stays in microseconds for a few hundred vehicles.
"""

from __future__ import annotations

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


@njit(cache=True)
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


@njit(cache=True)
def traffic_step(
    dt,
    plan,
    s,
    v,
    accel,
    half_len,
    speed_factor,
    granted,
    rand,
    o_lane,
    o_s,
    o_v,
    o_half,
    light_state,
    length,
    junction,
    light,
    succ_ptr,
    succ_idx,
    curve_speed,
    speed_limit,
    conflict,
    p_idm,  # accel, decel, headway, min_gap, max_decel, request_distance, merge_horizon, yellow_decel
    lane_start,
    lane_count,
    lane_ds,
    points,
    yaw,
    out_xyz,
    out_yaw,
):
    """Advance NPCs one tick: leaders, lights, junction right-of-way, IDM, lane changes at lane ends."""
    n = plan.shape[0]
    m = o_lane.shape[0]
    K = plan.shape[1]
    a_max, b_comf, headway, s0, b_max, req_dist, merge_h, b_yellow = (
        p_idm[0],
        p_idm[1],
        p_idm[2],
        p_idm[3],
        p_idm[4],
        p_idm[5],
        p_idm[6],
        p_idm[7],
    )
    offs = np.empty((n, K))
    lead_gap = np.full(n, INF)
    lead_v = v.copy()
    centre_gap = np.full(n, INF)
    entry_k = np.zeros(n, np.int64)
    entry_dist = np.full(n, INF)
    stop_gap = np.full(n, INF)
    request = np.zeros(n, np.bool_)

    for i in range(n):
        offs[i, 0] = -s[i]
        for k in range(1, K):
            offs[i, k] = offs[i, k - 1] + length[plan[i, k - 1]]
        rem_i = length[plan[i, 0]] - s[i]
        best, best_v, best_h = INF, v[i], 0.0
        for j in range(n + m):
            if j == i:
                continue
            if j < n:
                lj, sj, vj, hj = plan[j, 0], s[j], v[j], half_len[j]
            else:
                lj, sj, vj, hj = o_lane[j - n], o_s[j - n], o_v[j - n], o_half[j - n]
            d = INF
            for k in range(K):
                if lj == plan[i, k]:
                    dk = offs[i, k] + sj
                    if dk > 0 and dk < d:
                        d = dk
            # Just diverged onto a sibling successor lane: still in front of us.
            if sj < 8.0 and lj != plan[i, 1] and _is_successor(plan[i, 0], lj, succ_ptr, succ_idx):
                d = min(d, offs[i, 1] + sj)
            # Merging into the same next lane: whoever is nearer the merge goes first.
            if j < n and plan[j, 1] == plan[i, 1] and plan[j, 0] != plan[i, 0] and rem_i < merge_h:
                rem_j = length[plan[j, 0]] - s[j]
                if rem_j < rem_i or (rem_j == rem_i and j < i):
                    d = min(d, rem_i - rem_j + 1e-3)
            if d - hj < best - best_h:
                best, best_v, best_h = d, vj, hj
        centre_gap[i] = best
        if best < INF:
            lead_gap[i] = best - half_len[i] - best_h
            lead_v[i] = best_v

        # First junction entry along the plan, its light and its gate.
        for k in range(1, K):
            if junction[plan[i, k]] and not junction[plan[i, k - 1]]:
                entry_k[i] = k
                entry_dist[i] = offs[i, k]
                break
        if entry_k[i] == 0:
            continue
        k = entry_k[i]
        guard = light[plan[i, k - 1]]
        state = light_state[guard] if guard >= 0 else 2
        can_stop = entry_dist[i] - half_len[i] > v[i] * v[i] / (2.0 * b_yellow)
        light_stop = state == 0 or (state == 1 and can_stop)
        passed = granted[i] == plan[i, k]
        if passed:
            continue
        if light_stop:
            stop_gap[i] = entry_dist[i] - half_len[i]
            continue
        stop_gap[i] = entry_dist[i] - half_len[i]  # wait at the entry until granted
        if entry_dist[i] < req_dist + v[i] * v[i] / (2.0 * b_comf) and centre_gap[i] > entry_dist[i]:
            request[i] = True

    # Right-of-way: requesters in order of distance to their entry; each must conflict with no lane held.
    req = np.flatnonzero(request)
    if req.shape[0] > 0:
        held = np.zeros(length.shape[0], np.bool_)
        for i in range(n):
            if granted[i] >= 0:
                k0 = _chain_start(plan[i], granted[i])
                for k in range(k0, K):
                    if not junction[plan[i, k]]:
                        break
                    held[plan[i, k]] = True
        for j in range(m):
            if junction[o_lane[j]]:
                held[o_lane[j]] = True
        held_lanes = np.flatnonzero(held)
        order = req[np.argsort(entry_dist[req], kind="mergesort")]
        for i in order:
            ok = True
            k0 = entry_k[i]
            for k in range(k0, K):
                lane = plan[i, k]
                if not junction[lane]:
                    break
                for h in held_lanes:
                    if conflict[lane, h]:
                        ok = False
                        break
                if not ok:
                    break
            if ok:
                granted[i] = plan[i, k0]
                stop_gap[i] = INF
                for k in range(k0, K):
                    if not junction[plan[i, k]]:
                        break
                    held_lanes = np.append(held_lanes, plan[i, k])

    # IDM against the nearer of the leader and the stop line; then move along the lanes.
    sqrt_ab = 2.0 * np.sqrt(a_max * b_comf)
    for i in range(n):
        vi = v[i]
        v0 = speed_limit[plan[i, 0]] * speed_factor[i]
        v0 = min(v0, curve_speed[plan[i, 0]])
        if offs[i, 1] < 25.0:
            v0 = min(v0, curve_speed[plan[i, 1]])
        inter = 0.0
        if lead_gap[i] < INF:
            s_star = s0 + max(0.0, vi * headway + vi * (vi - lead_v[i]) / sqrt_ab)
            inter = (s_star / max(lead_gap[i], 0.1)) ** 2
        if stop_gap[i] < INF:
            s_stop = s0 + vi * headway + vi * vi / sqrt_ab
            inter = max(inter, (s_stop / max(stop_gap[i], 0.1)) ** 2)
        a = a_max * (1.0 - (vi / max(v0, 0.1)) ** 4 - inter)
        a = min(max(a, -b_max), a_max)
        nv = max(vi + a * dt, 0.0)
        accel[i] = (nv - vi) / dt
        v[i] = nv
        s[i] += nv * dt
        r = rand[i]
        while s[i] >= length[plan[i, 0]]:
            old = plan[i, 0]
            s[i] -= length[old]
            for k in range(K - 1):
                plan[i, k] = plan[i, k + 1]
            plan[i, K - 1] = _pick_successor(plan[i, K - 2], r, succ_ptr, succ_idx)
            r = (r * 9301.0 + 0.4929) % 1.0
            if junction[old] and not junction[plan[i, 0]]:
                granted[i] = -1
        x, y, z, h = lane_pose(plan[i, 0], s[i], lane_start, lane_count, lane_ds, length, points, yaw)
        out_xyz[i, 0] = x
        out_xyz[i, 1] = y
        out_xyz[i, 2] = z
        out_yaw[i] = h
