"""Maps shared by both backends: town sources, OpenDRIVE generator, lane graph."""

from carla_env.maps.generator import BUILTIN_TOWNS, TownSpec, generate_town
from carla_env.maps.lane_graph import LaneGraph, build_lane_graph
from carla_env.maps.town import Town, TownError, load_town, resolve_town

__all__ = [
    "BUILTIN_TOWNS",
    "LaneGraph",
    "Town",
    "TownError",
    "TownSpec",
    "build_lane_graph",
    "generate_town",
    "load_town",
    "resolve_town",
]
