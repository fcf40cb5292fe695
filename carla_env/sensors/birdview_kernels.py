"""Compiled (numba) kernels of the BEV renderer's hot path.

A render is a few dozen small array steps (box corners, a 2x3 map to pixels, what is on screen); as numpy
calls each costs microseconds of overhead on arrays of a few hundred numbers. Here each is one call. The
drawing itself stays with OpenCV, so the pixels are the ones OpenCV's rasteriser gives.
"""

from __future__ import annotations

import numpy as np
from numba import njit

# box_corners' polygon order: front-right, back-right, back-left, front-left (x forward, y right).
BOX_CORNERS = np.array([[1, 1], [1, -1], [-1, -1], [-1, 1]], float)


@njit(cache=True)
def frame_boxes(vehicles: np.ndarray, walkers: np.ndarray, walker_half: float):
    """(N, 4, 2) world corners and (N, 2) centres of (V, 5) vehicle boxes then (W, 5) walker boxes
    (x, y, yaw rad, half length, half width); a walker's half extents are at least `walker_half`."""
    nv = vehicles.shape[0]
    n = nv + walkers.shape[0]
    corners = np.empty((n, 4, 2))
    centres = np.empty((n, 2))
    for i in range(n):
        box = vehicles[i] if i < nv else walkers[i - nv]
        x, y, yaw, hl, hw = box[0], box[1], box[2], box[3], box[4]
        if i >= nv:
            hl, hw = max(hl, walker_half), max(hw, walker_half)
        c, s = np.cos(yaw), np.sin(yaw)
        for k in range(4):
            f = BOX_CORNERS[k, 0] * hl
            r = BOX_CORNERS[k, 1] * hw
            corners[i, k, 0] = x + f * c - r * s
            corners[i, k, 1] = y + f * s + r * c
        centres[i, 0], centres[i, 1] = x, y
    return corners, centres


@njit(cache=True, inline="always")
def _pixel(m, x, y):
    """Point (x, y) under the 2x3 map m, rounded half to even as numpy rounds."""
    return (
        np.int32(np.rint(m[0, 0] * x + m[0, 1] * y + m[0, 2])),
        np.int32(np.rint(m[1, 0] * x + m[1, 1] * y + m[1, 2])),
    )


@njit(cache=True)
def apply_affine(m: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """(N, 2) int32 pixels of (N, 2) points under the 2x3 map m."""
    out = np.empty(xy.shape, np.int32)
    for i in range(xy.shape[0]):
        out[i, 0], out[i, 1] = _pixel(m, xy[i, 0], xy[i, 1])
    return out


@njit(cache=True)
def overlapping(polygons: np.ndarray) -> np.ndarray:
    """Which (K, N, 2) pixel polygons have a bounding box (grown by a pixel) meeting another's: OpenCV's
    fillPoly fills several polygons even-odd, so where two overlap in one call they cancel out."""
    k = polygons.shape[0]
    lo = np.empty((k, 2), np.int64)
    hi = np.empty((k, 2), np.int64)
    for i in range(k):
        for a in range(2):
            lo[i, a] = polygons[i, :, a].min() - 1
            hi[i, a] = polygons[i, :, a].max() + 1
    out = np.zeros(k, np.bool_)
    for i in range(k):
        for j in range(i + 1, k):
            if (
                lo[i, 0] <= hi[j, 0]
                and lo[j, 0] <= hi[i, 0]
                and lo[i, 1] <= hi[j, 1]
                and lo[j, 1] <= hi[i, 1]
            ):
                out[i] = out[j] = True
    return out


@njit(cache=True)
def near_box_pixels(m, corners, centres, set_sizes, cx: float, cy: float, reach: float):
    """Pixels (K, 4, 2) of the boxes that may show, in order, how many of each consecutive set of
    `set_sizes` boxes they are, which of them overlap another of their set (`overlapping`) and which
    sets have such overlaps. A box may show if its corners come within `reach` metres of (cx, cy): the
    screen lies within it, farther ones are off screen."""
    out = np.empty((corners.shape[0], 4, 2), np.int32)
    counts = np.zeros(set_sizes.shape[0], np.int64)
    overlaps = np.zeros(corners.shape[0], np.bool_)
    overlapped = np.zeros(set_sizes.shape[0], np.bool_)  # per set: has it any overlap
    i = k = 0
    for s in range(set_sizes.shape[0]):
        first = k
        for _ in range(set_sizes[s]):
            radius = np.hypot(corners[i, 0, 0] - centres[i, 0], corners[i, 0, 1] - centres[i, 1])
            if np.hypot(centres[i, 0] - cx, centres[i, 1] - cy) <= reach + radius:
                for j in range(4):
                    out[k, j, 0], out[k, j, 1] = _pixel(m, corners[i, j, 0], corners[i, j, 1])
                k += 1
                counts[s] += 1
            i += 1
        if k - first > 1:
            overlaps[first:k] = overlapping(out[first:k])
            overlapped[s] = overlaps[first:k].any()
    return out[:k], counts, overlaps[:k], overlapped


@njit(cache=True)
def stop_lines_on_screen(m, segments, cx: float, cy: float, reach: float, size: int):
    """Indices and (K, 2, 2) pixels of the (S, 2, 2) segments with a pixel coordinate on screen. A line
    that passes farther than `reach` metres from (cx, cy) cannot touch the screen and is skipped unmapped."""
    index = np.empty(segments.shape[0], np.int64)
    out = np.empty((segments.shape[0], 2, 2), np.int32)
    k = 0
    for i in range(segments.shape[0]):
        ax, ay = segments[i, 0, 0], segments[i, 0, 1]
        ux, uy = segments[i, 1, 0] - ax, segments[i, 1, 1] - ay
        t = min(max(((cx - ax) * ux + (cy - ay) * uy) / max(ux * ux + uy * uy, 1e-12), 0.0), 1.0)
        if np.hypot(ax + t * ux - cx, ay + t * uy - cy) > reach:
            continue
        shown = False
        for e in range(2):
            u, v = _pixel(m, segments[i, e, 0], segments[i, e, 1])
            out[k, e, 0], out[k, e, 1] = u, v
            shown = shown or 0 <= u < size or 0 <= v < size
        if shown:
            index[k] = i
            k += 1
    return index[:k], out[:k]


@njit(cache=True)
def near_runs(m, points: np.ndarray, x: float, y: float, reach: float):
    """Pixels of `points` and the (R, 2) [start, stop) runs of consecutive points within `reach` metres
    of (x, y) that have at least two points (a polyline each)."""
    px = apply_affine(m, points)
    runs = np.empty((points.shape[0], 2), np.int64)
    r = 0
    start = -1
    for i in range(points.shape[0] + 1):
        near = i < points.shape[0] and np.hypot(points[i, 0] - x, points[i, 1] - y) < reach
        if near and start < 0:
            start = i
        elif not near and start >= 0:
            if i - start > 1:
                runs[r, 0], runs[r, 1] = start, i
                r += 1
            start = -1
    return px, runs[:r]


@njit(cache=True)
def unpack_static(static: np.ndarray, out: np.ndarray, channels: np.ndarray) -> None:
    """Bit b of each static-raster pixel into out[channels[b]] (a channel < 0: that bit is not shown)."""
    for b in range(channels.shape[0]):
        c = channels[b]
        if c < 0:
            continue
        for i in range(static.shape[0]):
            for j in range(static.shape[1]):
                out[c, i, j] = (static[i, j] >> b) & 1


@njit(cache=True)
def pack_planes(planes: np.ndarray, out: np.ndarray) -> None:
    """Channel k of (C, P) uint64 planes of 0/1 bytes into bit 7 - k % 8 of out[k // 8]: values are 0 or 1,
    so shifting 8 pixels at once as one uint64 never carries across bytes."""
    for k in range(planes.shape[0]):
        shift = np.uint64(7 - k % 8)
        row = out[k // 8]
        for i in range(planes.shape[1]):
            row[i] |= planes[k, i] << shift


@njit(cache=True)
def group_by_state(states: np.ndarray, lines: np.ndarray, num_states: int):
    """`lines` reordered by state 0 .. num_states - 1, and how many have each state (others are dropped)."""
    counts = np.zeros(num_states, np.int64)
    for s in states:
        if 0 <= s < num_states:
            counts[s] += 1
    starts = np.cumsum(counts) - counts
    out = np.empty((counts.sum(),) + lines.shape[1:], lines.dtype)
    for i in range(states.shape[0]):
        s = states[i]
        if 0 <= s < num_states:
            out[starts[s]] = lines[i]
            starts[s] += 1
    return out, counts
