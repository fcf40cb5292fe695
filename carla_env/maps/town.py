"""Town sources: the project's generated towns, an .xodr path, or a town of the user's CARLA install."""

from __future__ import annotations

import dataclasses
import difflib
import functools
import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import carla
import numpy as np

from carla_env.maps.generator import BUILTIN_TOWNS, TownSpec, generate_town
from carla_env.maps.lane_graph import LaneGraph, build_lane_graph

CARLA_XODR_DIR = Path("CarlaUE4/Content/Carla/Maps/OpenDrive")
OPT_SUFFIX = "_Opt"  # CARLA towns whose layers (buildings, props, ...) load and unload
GRID_PREFIX = "grid:"
XODR_FIX = (
    "give a .xodr file (e.g. a CARLA town's, from CarlaUE4/Content/Carla/Maps/OpenDrive) "
    "or a generated town such as GridTown01"
)


class TownError(ValueError):
    """A town that cannot be resolved or parsed; the message says what to do."""


@dataclass(frozen=True)
class TownSource:
    name: str
    kind: str  # 'generated' | 'file' | 'carla'
    path: Path | None = None
    spec: TownSpec | None = None

    def read(self) -> str:
        if self.kind == "generated":
            return generate_town(self.spec, self.name)
        try:
            return self.path.read_text()
        except OSError as e:
            raise TownError(f"cannot read OpenDRIVE file {self.path}: {e.strerror}") from e
        except UnicodeDecodeError:
            raise TownError(f"OpenDRIVE file {self.path} is not text; {XODR_FIX}") from None


def parse_grid_spec(text: str) -> TownSpec:
    """'grid:seed=7,columns=5' -> TownSpec(seed=7, columns=5)."""
    valid = {f.name: f.type for f in dataclasses.fields(TownSpec)}
    kwargs = {}
    body = text[len(GRID_PREFIX) :].strip()
    for item in filter(None, (p.strip() for p in body.split(","))):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or key not in valid:
            raise TownError(
                f"bad generated-town parameter {item!r} in {text!r}; use key=value with keys: {', '.join(valid)}"
            )
        try:
            kwargs[key] = int(value) if valid[key] in ("int", int) else float(value)
        except ValueError as e:
            raise TownError(f"generated-town parameter {key!r} needs a number, got {value!r}") from e
    try:
        return TownSpec(**kwargs)
    except ValueError as e:
        raise TownError(f"{text!r}: {e}") from e


def resolve_town(town: str, carla_root: str | None = None) -> TownSource:
    """Find where a town comes from without parsing it (cheap: used at config load)."""
    if town in BUILTIN_TOWNS:
        return TownSource(town, "generated", spec=BUILTIN_TOWNS[town])
    if town.startswith(GRID_PREFIX):
        return TownSource(town, "generated", spec=parse_grid_spec(town))
    if town.endswith(".xodr") or os.sep in town:
        path = Path(town).expanduser()
        if not path.is_file():
            raise TownError(f"OpenDRIVE file not found: {path}; give an existing .xodr path")
        return TownSource(path.stem, "file", path=path)
    root = carla_root if carla_root is not None else os.environ.get("CARLA_ROOT")
    if root:
        # A layered town (Town01_Opt) shares its road network with the plain one.
        for stem in (town, town.removesuffix(OPT_SUFFIX)):
            path = Path(root) / CARLA_XODR_DIR / f"{stem}.xodr"
            if path.is_file():
                return TownSource(town, "carla", path=path)
    known = list(BUILTIN_TOWNS)
    hint = difflib.get_close_matches(town, known, n=1)
    where = f"not in $CARLA_ROOT/{CARLA_XODR_DIR} ({root})" if root else "CARLA_ROOT is not set"
    raise TownError(
        f"unknown town {town!r} ({where}); use a generated town ({', '.join(known)}, or 'grid:seed=N,...'), "
        f"a path to an .xodr file, or set CARLA_ROOT to a CARLA install"
        + (f"; did you mean {hint[0]!r}?" if hint else "")
    )


@dataclass(frozen=True, eq=False)
class Town:
    name: str
    xodr: str
    map: carla.Map
    lanes: LaneGraph

    def spawn_candidates(self, spacing: float = 12.0, margin: float = 6.0) -> tuple[np.ndarray, np.ndarray]:
        """Deterministic (lane, s) spawn slots on driving lanes outside junctions, `spacing` metres apart."""
        g = self.lanes
        lanes, ss = [], []
        for lane in np.flatnonzero(g.lane_main & ~g.is_junction):
            length = g.lane_length[lane]
            if length < 2 * margin:
                continue
            s = np.arange(margin, length - margin + 1e-6, spacing)
            lanes.append(np.full(len(s), lane))
            ss.append(s)
        if not lanes:
            raise TownError(f"town {self.name!r} has no driving lane long enough to spawn a vehicle")
        return np.concatenate(lanes).astype(np.int32), np.concatenate(ss)

    def spawn_points(self, seed: int | None = None, spacing: float = 12.0) -> list[carla.Transform]:
        """Spawn points as carla.Transforms (z raised 0.5 m, as in CARLA's own); shuffled when seeded."""
        lanes, ss = self.spawn_candidates(spacing)
        order = np.arange(len(lanes)) if seed is None else np.random.default_rng(seed).permutation(len(lanes))
        pos, yaw = self.lanes.interpolate(lanes[order], ss[order])
        return [
            carla.Transform(
                carla.Location(float(x), float(y), float(z) + 0.5), carla.Rotation(yaw=float(np.degrees(h)))
            )
            for (x, y, z), h in zip(pos, yaw, strict=True)
        ]


def load_town(town: str, carla_root: str | None = None) -> Town:
    source = resolve_town(town, carla_root)
    return _load(source)


def check_town(town: str, carla_root: str | None = None) -> TownSource:
    """resolve_town, and an OpenDRIVE file is parsed too (cached per file version): used at config load,
    so a broken map fails there in one line, not inside a Ray worker."""
    source = resolve_town(town, carla_root)
    if source.path is not None:
        stat = source.path.stat()
        _check_file(source.name, source.path, stat.st_mtime_ns, stat.st_size)
    return source


@functools.lru_cache(maxsize=32)
def _check_file(name: str, path: Path, mtime_ns: int, size: int) -> None:
    _parse(name, TownSource(name, "file", path=path).read(), path)


def _parse(name: str, xodr: str, path: Path | None) -> carla.Map:
    """carla.Map of this OpenDRIVE text; what is wrong with it, named and with the fix, as a TownError."""
    what = f"OpenDRIVE file {path}" if path is not None else f"town {name!r}"
    if not xodr.strip():
        raise TownError(f"{what} is empty; {XODR_FIX}")
    # Checked before carla.Map, which prints its own parser errors and says only "failed to generate map".
    try:
        root = ET.fromstring(xodr)
    except ET.ParseError as e:
        raise TownError(f"{what} is not XML ({e}); {XODR_FIX}") from None
    if root.tag != "OpenDRIVE":
        raise TownError(
            f"{what} is XML but not OpenDRIVE (root <{root.tag}>, expected <OpenDRIVE>); {XODR_FIX}"
        )
    try:
        cmap = carla.Map(name, xodr)
    except RuntimeError as e:
        raise TownError(f"cannot parse {what}: {e}; {XODR_FIX}") from None
    if not cmap.get_topology():
        raise TownError(f"{what} has no driving lanes; {XODR_FIX}")
    return cmap


@functools.lru_cache(maxsize=8)
def _load(source: TownSource) -> Town:
    xodr = source.read()
    cmap = _parse(source.name, xodr, source.path)
    return Town(source.name, xodr, cmap, build_lane_graph(cmap, xodr))
