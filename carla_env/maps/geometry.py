"""Compiled lane-geometry lookups shared by traffic, heroes and the BEV."""

from __future__ import annotations

import numpy as np
from numba import njit

INF = np.inf
TWO_PI = 2.0 * np.pi


@njit(cache=True, inline="always")
def _wrap(a):
    return (a + np.pi) % TWO_PI - np.pi


@njit(cache=True)
def lane_pose(lane, s, lane_start, lane_count, lane_ds, lane_length, points, yaw):
    """Position and yaw at distance s along a lane."""
    ss = min(max(s, 0.0), lane_length[lane])
    u = ss / lane_ds[lane]
    seg = min(int(u), lane_count[lane] - 2)
    frac = u - seg
    i0 = lane_start[lane] + seg
    x = points[i0, 0] + (points[i0 + 1, 0] - points[i0, 0]) * frac
    y = points[i0, 1] + (points[i0 + 1, 1] - points[i0, 1]) * frac
    z = points[i0, 2] + (points[i0 + 1, 2] - points[i0, 2]) * frac
    h = yaw[i0] + _wrap(yaw[i0 + 1] - yaw[i0]) * frac
    return x, y, z, h


@njit(cache=True, inline="always")
def _match_cost(p, x, y, z, heading, use_heading, points, yaw):
    """Planar distance to lane point p, plus penalties for another level (overpass) or an opposing heading."""
    d = np.hypot(points[p, 0] - x, points[p, 1] - y)
    cost = d
    if abs(points[p, 2] - z) > 2.5:
        cost += 1000.0
    if use_heading and abs(_wrap(yaw[p] - heading)) > np.pi / 2:
        cost += 50.0
    return cost, d


@njit(cache=True)
def nearest_point(
    x,
    y,
    z,
    heading,
    use_heading,
    grid_origin,
    grid_cell,
    grid_shape,
    cell_ptr,
    cell_pts,
    points,
    yaw,
    max_rings,
):
    """Index of the lane point that best matches a pose (distance, heading, level), and its distance."""
    cx = int((x - grid_origin[0]) / grid_cell)
    cy = int((y - grid_origin[1]) / grid_cell)
    best, best_cost, best_dist = -1, INF, INF
    for ring in range(max_rings + 1):
        for gx in range(cx - ring, cx + ring + 1):
            for gy in range(cy - ring, cy + ring + 1):
                if max(abs(gx - cx), abs(gy - cy)) != ring:
                    continue  # only the ring's border: inner cells were searched already
                if gx < 0 or gy < 0 or gx >= grid_shape[0] or gy >= grid_shape[1]:
                    continue
                c = gx * grid_shape[1] + gy
                for k in range(cell_ptr[c], cell_ptr[c + 1]):
                    p = cell_pts[k]
                    cost, d = _match_cost(p, x, y, z, heading, use_heading, points, yaw)
                    if cost < best_cost:
                        best, best_cost, best_dist = p, cost, d
        # A hit within this ring is exact once the ring's inner radius exceeds its distance.
        if best >= 0 and best_cost < ring * grid_cell:
            return best, best_dist
    # Far from every lane (or only costly hits nearby): scan all points.
    for p in range(points.shape[0]):
        cost, d = _match_cost(p, x, y, z, heading, use_heading, points, yaw)
        if cost < best_cost:
            best, best_cost, best_dist = p, cost, d
    return best, best_dist


@njit(cache=True)
def nearest_in_window(points, start: int, end: int, x: float, y: float):
    """(index, planar distance) of the point of points[start:end] nearest (x, y): the first of equals,
    as numpy.argmin. A window past the last point ends there."""
    end = min(end, points.shape[0])
    best, best_d = start, np.inf
    for i in range(start, end):
        d = np.hypot(points[i, 0] - x, points[i, 1] - y)
        if d < best_d:
            best, best_d = i, d
    return best, best_d
