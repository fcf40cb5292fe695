"""Bird's-eye view: one renderer for both backends, from arrays only.

Layout after Roach: 192x192 px at 5 px/m, ego heading up, ego 40 px above the
bottom edge. Frame: CARLA's (x forward, y right), so in the image a vehicle to
the hero's right is on the right, with no flip.

Static layers (road, solid and broken markings) are rasterised once per town as
bits of one uint8 image; each observation warps it with a single affine map.
Dynamic layers are drawn from a `Scene` (plain arrays), so the carla backend
(actors from `world.get_actors()`) and the embedded one give the same pixels.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Literal, get_args

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from carla_env.maps.geometry import nearest_in_window
from carla_env.maps.lane_graph import MARKING, LaneGraph
from carla_env.sensors.birdview_kernels import (
    apply_affine,
    frame_boxes,
    group_by_state,
    near_box_pixels,
    near_runs,
    pack_planes,
    stop_lines_on_screen,
    unpack_static,
)

STATIC = ("road", "lane_solid", "lane_broken")
WALKER_MIN_PIXELS = 3  # a walker's box is drawn at least this many pixels across
_SOLID = {MARKING[k] for k in ("Solid", "SolidSolid", "SolidBroken", "BrokenSolid", "Curb", "Grass")}
_BROKEN = {MARKING[k] for k in ("Broken", "BrokenBroken", "BottsDots")}
RED, YELLOW, GREEN = 0, 1, 2  # carla.TrafficLightState's values
NUM_LIGHT_STATES = 3  # the ones drawn


# Every channel the renderer draws. "ego" is off by default, as in Roach (the ego always sits at the
# same pixels); "speed" is the ego's speed as a bar from the left edge, for a BEV-only CNN to read.
ChannelName = Literal[
    "road",
    "route",
    "lane_solid",
    "lane_broken",
    "vehicles",
    "walkers",
    "lights_green",
    "lights_yellow",
    "lights_red",
    "ego",
    "speed",
]
CHANNELS: tuple[str, ...] = get_args(ChannelName)


class BirdviewSpec(BaseModel):
    """What a bird's-eye view shows and at which resolution; `sensor.birdview`'s attributes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    size: int = Field(192, ge=16, le=1024, description="pixels per side")
    pixels_per_meter: float = Field(5.0, gt=0)
    ego_offset: int = Field(40, ge=0, description="px from the bottom edge to the ego centre")
    # Seconds; Roach's [-16,-11,-6,-1] frames at 10 Hz.
    history: tuple[float, ...] = Field((-1.6, -1.1, -0.6, -0.1), min_length=1)
    # The ego's own past boxes in the vehicles history channels: its trail shows its speed and yaw
    # rate (Roach feeds speed as a separate vector; a BEV-only policy would not see it). No extra channel.
    ego_history: bool = False
    speed_range: float = Field(20.0, gt=0, description="m/s at which the speed bar spans the full width")
    # 24 channels by default = 3 bytes a pixel packed.
    channels: tuple[ChannelName, ...] = Field(
        tuple(c for c in CHANNELS if c not in ("ego", "speed")),  # Roach's
        min_length=1,
    )
    # Bit-pack the masks, 8 channels a byte: 1/8 of the bytes through runners and replay buffers.
    packed: bool = False

    @field_validator("history")
    @classmethod
    def _past(cls, history: tuple[float, ...]) -> tuple[float, ...]:
        if any(t > 0 for t in history):
            raise ValueError("history frames are seconds in the past: use values <= 0")
        return history

    def channel_names(self) -> list[str]:
        """One entry per output channel; history layers expand to one channel per history frame."""
        out = []
        for c in self.channels:
            if c in ("vehicles", "walkers") or c.startswith("lights_"):
                out += [f"{c}@{t:g}s" for t in self.history]
            else:
                out.append(c)
        return out

    @property
    def num_channels(self) -> int:
        return len(self.channel_names())

    def observation_space(self):
        """The gymnasium space of the observation: (C, H, W) masks in {0, 1}, or (ceil(C/8), H, W)
        bytes when packed (channel k is bit 7 - k % 8 of byte k // 8; the padding bits are 0)."""
        import gymnasium as gym

        depth = -(-self.num_channels // 8) if self.packed else self.num_channels
        return gym.spaces.Box(0, 255 if self.packed else 1, (depth, self.size, self.size), np.uint8)


def box_corners(boxes: np.ndarray) -> np.ndarray:
    """(N, 4, 2) world corners, in polygon order, of (N, 5) boxes x, y, yaw (rad), half_length, half_width."""
    corners, _ = frame_boxes(np.asarray(boxes, float).reshape(-1, 5), _NO_BOXES, 0.0)
    return corners


_NO_BOXES = np.zeros((0, 5))


@dataclass
class Scene:
    """What one frame of the world looks like to the renderer: arrays in CARLA's frame."""

    ego: np.ndarray  # (5,) x, y, yaw(rad), half_length, half_width
    vehicles: np.ndarray  # (N, 5) other vehicles, same columns
    walkers: np.ndarray = field(default_factory=lambda: np.zeros((0, 5)))
    light_states: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # per lane-graph light
    ego_speed: float = 0.0  # m/s in the ground plane
    # (N, 2) vx, vy of each walker row: not drawn; the reward's walker gap reads where they are heading
    walker_velocities: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    # (N, 2) vx, vy of each vehicle row: not drawn; the reward's vehicle gap projects moving ones
    vehicle_velocities: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))


@dataclass
class _Frame:
    """A scene with its boxes' world corners, computed once: the renderer draws a scene again in the
    history channels of later frames."""

    scene: Scene
    corners: np.ndarray  # (N, 4, 2) world corners: the vehicles' boxes, then the walkers'
    centres: np.ndarray  # (N, 2) the boxes' centres
    num_vehicles: int

    @classmethod
    def of(cls, scene: Scene, spec: BirdviewSpec, walker_half: float) -> _Frame:
        vehicles = np.vstack([scene.ego[None, :], scene.vehicles]) if spec.ego_history else scene.vehicles
        vehicles = np.asarray(vehicles, float).reshape(-1, 5)
        # Walker boxes at least WALKER_MIN_PIXELS across: a 0.5 m pedestrian is one pixel at 2 px/m, too
        # small for a CNN to see reliably (Roach enlarges walkers in its BEV for the same reason).
        corners, centres = frame_boxes(vehicles, np.asarray(scene.walkers, float).reshape(-1, 5), walker_half)
        return cls(scene, corners, centres, len(vehicles))


class StaticRaster:
    """The town's static layers as bits of one uint8 image in world coordinates."""

    def __init__(self, lanes: LaneGraph, pixels_per_meter: float, margin: float = 30.0) -> None:
        self.ppm = pixels_per_meter
        pts = lanes.points[:, :2]
        self.origin = pts.min(axis=0) - margin
        w, h = np.ceil((pts.max(axis=0) + margin - self.origin) * self.ppm).astype(int)
        self.image = np.zeros((h, w), np.uint8)
        road = np.zeros_like(self.image)
        solid = np.zeros_like(self.image)
        broken = np.zeros_like(self.image)
        for lane in range(lanes.num_lanes):
            a, c = lanes.lane_start[lane], lanes.lane_count[lane]
            p, yaw = lanes.points[a : a + c, :2], lanes.yaw[a : a + c]
            right = np.column_stack([-np.sin(yaw), np.cos(yaw)]) * (lanes.lane_width[lane] / 2)
            left_edge, right_edge = self.px(p - right), self.px(p + right)
            cv2.fillPoly(road, [np.vstack([left_edge, right_edge[::-1]])], 1)
            for edge, marks in (
                (left_edge, lanes.mark_left[a : a + c]),
                (right_edge, lanes.mark_right[a : a + c]),
            ):
                for target, kinds in ((solid, _SOLID), (broken, _BROKEN)):
                    on = np.isin(marks, list(kinds))
                    for run in _runs(on):
                        if len(run) > 1:
                            cv2.polylines(target, [edge[run]], False, 1, 1)
        for bit, layer in enumerate((road, solid, broken)):
            self.image |= layer << bit
        self.image.flags.writeable = False  # shared by every renderer of this town

    def px(self, xy: np.ndarray) -> np.ndarray:
        return np.round((xy - self.origin) * self.ppm).astype(np.int32)


_RASTERS: dict[tuple[str, float], StaticRaster] = {}


def static_raster(lanes: LaneGraph, pixels_per_meter: float) -> StaticRaster:
    """The town's raster, built once per process (an env builds a renderer every episode)."""
    key = (lanes.xodr_hash, pixels_per_meter)
    if key not in _RASTERS:
        if len(_RASTERS) >= 4:
            _RASTERS.pop(next(iter(_RASTERS)))  # a few towns at most: Town04 alone is 22 MB
        _RASTERS[key] = StaticRaster(lanes, pixels_per_meter)
    return _RASTERS[key]


def _fill_polygons(canvas: np.ndarray, polygons: np.ndarray, overlaps: np.ndarray) -> None:
    """Fill (K, N, 2) pixel polygons with 1 where some overlap (`overlapping`'s flags): those apart in
    one fillPoly call, each overlapping one in a call of its own (in one call, overlaps would cancel out)."""
    apart = ~overlaps
    if apart.any():
        cv2.fillPoly(canvas, polygons[apart], 1)
    for polygon in polygons[overlaps]:
        cv2.fillPoly(canvas, polygon[None], 1)


def _runs(mask: np.ndarray) -> list[np.ndarray]:
    idx = np.flatnonzero(mask)
    if not len(idx):
        return []
    return np.split(idx, np.flatnonzero(np.diff(idx) > 1) + 1)


def render_on_calling_thread() -> None:
    """OpenCV's own thread pool off for this process, unless OPENCV_FOR_THREADS_NUM says otherwise.

    Its pthreads pool has a worker per CPU that spins after each parallel call. On images this small
    the pool gives nothing: on the 16-CPU machine each EnvRunner had 15 such workers at ~27% of a core
    each (load average ~100 with 14 runners), taking cores from the envs."""
    if not os.environ.get("OPENCV_FOR_THREADS_NUM") and cv2.getNumThreads() != 1:
        cv2.setNumThreads(1)


class BirdviewRenderer:
    """Renders a (C, H, W) uint8 {0, 1} observation (or its bit-packed form) from scenes."""

    def __init__(
        self, lanes: LaneGraph, spec: BirdviewSpec | None = None, delta_seconds: float = 0.05
    ) -> None:
        render_on_calling_thread()
        self.spec = spec or BirdviewSpec()
        self.lanes = lanes
        self.raster = static_raster(lanes, self.spec.pixels_per_meter)
        self.names = self.spec.channel_names()
        self.index = {n: i for i, n in enumerate(self.names)}
        # History frames, in ticks back from now (0 = current).
        self.history_ticks = [
            max(0, round(-t / delta_seconds) - round(0.1 / delta_seconds)) for t in self.spec.history
        ]
        self._frames: list[_Frame] = []  # newest first
        self._stop_lines = self._stop_line_segments(lanes)
        s = self.spec
        # Metres from the ego within which the whole screen lies: its farthest corner, plus a line's
        # width and a pixel of rounding.
        corner = math.hypot(s.size / 2, max(s.ego_offset, s.size - s.ego_offset))
        self._line_width = max(1, int(0.5 * s.pixels_per_meter))  # stop lines, px
        self._screen_reach = (corner + self._line_width + 1) / s.pixels_per_meter
        self._walker_half = 0.5 * WALKER_MIN_PIXELS / s.pixels_per_meter
        self._static_channels = np.array([self.index.get(name, -1) for name in STATIC])  # per raster bit
        # Per history time, the channel of each box layer (-1: not shown).
        self._box_channels = {
            t: {k: self.index.get(f"{k}@{t:g}s", -1) for k in ("vehicles", "walkers")} for t in s.history
        }
        self._light_channels = {
            name: state
            for name, state in (("lights_green", GREEN), ("lights_yellow", YELLOW), ("lights_red", RED))
            if name in s.channels
        }
        self.route: np.ndarray | None = None  # (M, 2) world points of the planned route
        self._route_next = 0  # index of the route point nearest the ego so far
        self._ego: np.ndarray | None = None  # the newest rendered ego box, for colorize

    def reset(self) -> None:
        self._frames = []
        self._ego = None
        self.set_route(None)

    def set_route(self, points: np.ndarray | None) -> None:
        """The route to draw in the "route" channel: only the part not yet passed, as Roach draws its
        remaining plan (a route that comes back near itself then shows one way on)."""
        self.route = None if points is None or not len(points) else np.asarray(points, float)[:, :2]
        self._route_next = 0

    # ------------------------------------------------------------------ rendering
    def __call__(self, scene: Scene) -> np.ndarray:
        self._frames.insert(0, _Frame.of(scene, self.spec, self._walker_half))
        del self._frames[max(self.history_ticks) + 1 :]
        return self._render(self._frames)

    def render(self, scene: Scene) -> np.ndarray:
        """The observation of `scene` alone, its history layers showing the scene itself."""
        return self._render([_Frame.of(scene, self.spec, self._walker_half)])

    def _render(self, frames: list[_Frame]) -> np.ndarray:
        spec, size, index = self.spec, self.spec.size, self.index
        scene = frames[0].scene
        ego = scene.ego
        out = np.zeros((len(self.names), size, size), np.uint8)
        self._ego = ego
        to_bev = self._world_to_bev(ego)
        static = cv2.warpAffine(
            self.raster.image,
            self._raster_to_bev(to_bev),
            (size, size),
            flags=cv2.INTER_NEAREST,
            borderValue=0,
        )
        unpack_static(static, out, self._static_channels)
        if "speed" in index:
            fraction = min(max(scene.ego_speed / spec.speed_range, 0.0), 1.0)
            out[index["speed"], :, : round(fraction * size)] = 1
        if "route" in index and self.route is not None:
            self._draw_route(out[index["route"]], to_bev, ego)
        pasts = [frames[min(ticks, len(frames) - 1)] for ticks in self.history_ticks]
        self._fill_boxes(out, to_bev, pasts, ego)
        self._draw_lights(out, to_bev, pasts, ego)
        return out

    def _fill_boxes(self, out: np.ndarray, to_bev: np.ndarray, pasts: list[_Frame], ego: np.ndarray) -> None:
        """Every box of every history frame near enough to show through one kernel (corners in the world
        were computed once per frame), then one fillPoly per channel."""
        spec, index = self.spec, self.index
        channels, corners, centres, sizes = [], [], [], []
        if "ego" in index:
            channels.append(index["ego"])
            corners.append(box_corners(ego))
            centres.append(ego[None, :2])
            sizes.append(1)
        for t, past in zip(spec.history, pasts, strict=True):
            v = past.num_vehicles
            channels += [self._box_channels[t]["vehicles"], self._box_channels[t]["walkers"]]
            corners.append(past.corners)
            centres.append(past.centres)
            sizes += [v, len(past.corners) - v]
        pts, counts, overlaps, overlapped = near_box_pixels(
            to_bev,
            np.concatenate(corners),
            np.concatenate(centres),
            np.array(sizes),
            ego[0],
            ego[1],
            self._screen_reach,
        )
        a = 0
        for channel, count, overlap in zip(channels, counts.tolist(), overlapped.tolist(), strict=True):
            if count and channel >= 0:
                if overlap:
                    _fill_polygons(out[channel], pts[a : a + count], overlaps[a : a + count])
                else:
                    cv2.fillPoly(out[channel], pts[a : a + count], 1)
            a += count

    def _draw_lights(self, out: np.ndarray, to_bev: np.ndarray, pasts: list[_Frame], ego: np.ndarray) -> None:
        """Stop lines in the channel of their light's state, per history frame. Lights seldom change
        within the history: a frame whose on-screen lights match an earlier one's copies its channels."""
        seg_light, segs = self._stop_lines
        if not self._light_channels or not len(seg_light):
            return
        shown, seg_px = stop_lines_on_screen(to_bev, segs, ego[0], ego[1], self._screen_reach, self.spec.size)
        if not len(shown):
            return
        seg_light = seg_light[shown]
        drawn: dict[bytes, float] = {}  # states of the on-screen lines -> the history time drawn with them
        for t, past in zip(self.spec.history, pasts, strict=True):
            states = past.scene.light_states
            if not len(states):
                continue
            seg_state = np.asarray(states, np.int64)[seg_light]
            key = seg_state.tobytes()
            if key in drawn:
                for name in self._light_channels:
                    out[self.index[f"{name}@{t:g}s"]] = out[self.index[f"{name}@{drawn[key]:g}s"]]
                continue
            drawn[key] = t
            lines, counts = group_by_state(seg_state, seg_px, NUM_LIGHT_STATES)
            starts = (np.cumsum(counts) - counts).tolist()
            for name, state in self._light_channels.items():
                a, n = starts[state], int(counts[state])
                if n:
                    cv2.polylines(
                        out[self.index[f"{name}@{t:g}s"]], lines[a : a + n], False, 1, self._line_width
                    )

    def _draw_route(self, canvas: np.ndarray, to_bev: np.ndarray, ego: np.ndarray) -> None:
        """The route on from just behind the ego's nearest point, where it is near enough to show; the
        search for that point starts at the last one, so a passed part never comes back."""
        self._route_next, _ = nearest_in_window(self.route, self._route_next, len(self.route), ego[0], ego[1])
        rest = self.route[max(0, self._route_next - 2) :]
        reach = self.spec.size / self.spec.pixels_per_meter * 1.5
        px, runs = near_runs(to_bev, rest, ego[0], ego[1], reach)
        thickness = int(2 * self.spec.pixels_per_meter)
        for start, stop in runs.tolist():
            cv2.polylines(canvas, [px[start:stop]], False, 1, thickness)

    def _world_to_bev(self, ego: np.ndarray) -> np.ndarray:
        """2x3 affine map from CARLA world (x, y) to BEV pixels (col, row)."""
        x, y, yaw = float(ego[0]), float(ego[1]), float(ego[2])
        ppm, size = self.spec.pixels_per_meter, self.spec.size
        c, s = math.cos(yaw), math.sin(yaw)
        # forward f = c*dx + s*dy -> up; right r = -s*dx + c*dy -> right.
        a, b, d, e = -ppm * s, ppm * c, -ppm * c, -ppm * s
        col, row = size / 2, size - self.spec.ego_offset
        return np.array([[a, b, col - (a * x + b * y)], [d, e, row - (d * x + e * y)]])

    def _raster_to_bev(self, to_bev: np.ndarray) -> np.ndarray:
        # raster (u, v) = (world - origin) * ppm  ->  world = (u, v) / ppm + origin
        (a, b, c), (d, e, f) = to_bev.tolist()
        (ox, oy), ppm = self.raster.origin.tolist(), self.raster.ppm
        return np.array([[a / ppm, b / ppm, a * ox + b * oy + c], [d / ppm, e / ppm, d * ox + e * oy + f]])

    @staticmethod
    def _apply(m: np.ndarray, xy: np.ndarray) -> np.ndarray:
        return apply_affine(m, np.asarray(xy, float).reshape(-1, 2))

    @staticmethod
    def _stop_line_segments(lanes: LaneGraph) -> tuple[np.ndarray, np.ndarray]:
        """(light index per segment, (S, 2, 2) segments across the end of each guarded lane)."""
        guarded = np.flatnonzero(lanes.lane_light >= 0)
        end = lanes.lane_start[guarded] + lanes.lane_count[guarded] - 1
        p, yaw = lanes.points[end, :2], lanes.yaw[end]
        half = (lanes.lane_width[guarded] / 2)[:, None] * np.column_stack([-np.sin(yaw), np.cos(yaw)])
        return lanes.lane_light[guarded], np.stack([p - half, p + half], axis=1)

    # ------------------------------------------------------------------ for people
    def colorize(self, obs: np.ndarray) -> np.ndarray:
        """RGB rendering of an observation (newest history frame), for previews and videos. The ego is
        drawn even when the spec has no "ego" channel (a policy may leave it implicit; a person's
        picture shows it), from the newest rendered scene's box."""
        corners = None
        if self._ego is not None:
            corners = self._apply(self._world_to_bev(self._ego), box_corners(self._ego)[0])
        return colorize(self.spec, obs, corners)


EGO_COLOUR = (230, 230, 60)


def colorize(spec: BirdviewSpec, obs: np.ndarray, ego_corners: np.ndarray | None = None) -> np.ndarray:
    """(H, W, 3) uint8 RGB rendering of a (C, H, W) observation of `spec` (its newest history frame);
    `ego_corners` (4, 2) pixels fill the ego where the spec has no ego channel."""
    index = {n: i for i, n in enumerate(spec.channel_names())}
    img = np.zeros((spec.size, spec.size, 3), np.uint8)
    newest = f"{spec.history[-1]:g}s"
    layers = [
        ("road", (70, 70, 70)),
        ("lane_broken", (200, 200, 200)),
        ("lane_solid", (255, 255, 255)),
        ("route", (40, 90, 160)),
        (f"walkers@{newest}", (255, 0, 255)),
        (f"vehicles@{newest}", (0, 160, 255)),
        (f"lights_green@{newest}", (0, 220, 0)),
        (f"lights_yellow@{newest}", (240, 220, 0)),
        (f"lights_red@{newest}", (230, 0, 0)),
        ("ego", EGO_COLOUR),
    ]
    for name, color in layers:
        if name in index:
            img[obs[index[name]] > 0] = color
    if "ego" not in index and ego_corners is not None:
        cv2.fillPoly(img, [np.asarray(ego_corners, np.int32)], EGO_COLOUR)
    return img


def pack(obs: np.ndarray) -> np.ndarray:
    """(C, H, W) {0,1} uint8 -> (ceil(C/8), H, W) uint8, 8 masks per byte (channel 0 = most significant bit),
    exactly numpy.packbits(obs, axis=0)."""
    c = obs.shape[0]
    if obs.dtype != np.uint8 or obs[0].size % 8 or not obs.flags.c_contiguous:
        return np.packbits(obs.astype(bool), axis=0)
    planes = obs.reshape(c, -1).view(np.uint64)
    out = np.zeros(((c + 7) // 8, planes.shape[1]), np.uint64)
    pack_planes(planes, out)
    return out.view(np.uint8).reshape((len(out),) + obs.shape[1:])


def unpack(packed: np.ndarray, channels: int) -> np.ndarray:
    return np.unpackbits(packed, axis=0, count=channels)
