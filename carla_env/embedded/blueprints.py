"""A blueprint library answering the subset of carla.BlueprintLibrary that experiments use."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

# Half-extents (x, y, z) in metres and wheelbase, from CARLA 0.9.16's vehicle bounding boxes.
VEHICLES: dict[str, tuple[float, float, float, float]] = {
    "vehicle.tesla.model3": (2.396, 1.082, 0.759, 2.88),
    "vehicle.lincoln.mkz_2020": (2.449, 1.062, 0.766, 2.85),
    "vehicle.audi.a2": (1.858, 0.901, 0.774, 2.47),
    "vehicle.toyota.prius": (2.256, 1.003, 0.762, 2.70),
    "vehicle.nissan.micra": (1.816, 0.925, 0.754, 2.45),
    "vehicle.mercedes.coupe_2020": (2.336, 1.010, 0.710, 2.87),
    "vehicle.dodge.charger_2020": (2.502, 1.035, 0.776, 3.05),
    "vehicle.ford.mustang": (2.359, 0.947, 0.650, 2.72),
}
# Pedestrians: half-extents (x, y, z) of a standing adult (CARLA's walkers are ~0.5 m across, ~1.9 m tall).
WALKERS: dict[str, tuple[float, float, float]] = {
    f"walker.pedestrian.{k:04d}": (0.25, 0.25, 0.93) for k in range(1, 9)
}
WALKER_SPEEDS = ("0.0", "1.4", "2.8")  # the 'speed' attribute's recommended values: still, walk, run
WALKER_CONTROLLER = "controller.ai.walker"
SENSORS = (
    "sensor.other.collision",
    "sensor.other.lane_invasion",
    "sensor.birdview",
)


@dataclass
class ActorAttribute:
    id: str
    value: str
    recommended_values: list[str] = field(default_factory=list)

    def as_str(self) -> str:
        return self.value

    def __str__(self) -> str:
        return self.value


@dataclass
class ActorBlueprint:
    id: str
    tags: list[str]
    _attributes: dict[str, str] = field(default_factory=dict)

    def has_attribute(self, key: str) -> bool:
        return key in self._attributes

    def get_attribute(self, key: str) -> ActorAttribute:
        if key not in self._attributes:
            raise IndexError(f"blueprint {self.id!r} has no attribute {key!r}")
        recommended = list(WALKER_SPEEDS) if key == "speed" else []
        return ActorAttribute(key, self._attributes[key], recommended)

    def set_attribute(self, key: str, value) -> None:
        self._attributes[key] = str(value)

    def has_tag(self, tag: str) -> bool:
        return tag in self.tags

    def match_tags(self, pattern: str) -> bool:
        return any(fnmatch.fnmatch(t, pattern) for t in self.tags)

    def __iter__(self):
        return (ActorAttribute(k, v) for k, v in self._attributes.items())


class BlueprintLibrary:
    def __init__(self) -> None:
        self._bps: dict[str, ActorBlueprint] = {}
        for bp_id in VEHICLES:
            _, make, model = bp_id.split(".")
            self._bps[bp_id] = ActorBlueprint(
                bp_id, ["vehicle", make, model], {"role_name": "autopilot", "number_of_wheels": "4"}
            )
        for bp_id in WALKERS:
            self._bps[bp_id] = ActorBlueprint(
                bp_id,
                ["walker", "pedestrian", bp_id.rsplit(".", 1)[1]],
                {
                    "role_name": "pedestrian",
                    "is_invincible": "false",
                    "speed": WALKER_SPEEDS[1],
                    "age": "adult",
                },
            )
        self._bps[WALKER_CONTROLLER] = ActorBlueprint(
            WALKER_CONTROLLER, ["controller", "ai", "walker"], {"role_name": "controller"}
        )
        for bp_id in SENSORS:
            self._bps[bp_id] = ActorBlueprint(bp_id, bp_id.split("."), {"role_name": "front"})

    def find(self, bp_id: str) -> ActorBlueprint:
        if bp_id not in self._bps:
            raise IndexError(
                f"blueprint {bp_id!r} not found in the embedded simulator; known: {', '.join(self._bps)}"
            )
        bp = self._bps[bp_id]
        return ActorBlueprint(bp.id, list(bp.tags), dict(bp._attributes))

    def filter(self, pattern: str) -> list[ActorBlueprint]:
        return [self.find(k) for k in self._bps if fnmatch.fnmatch(k, pattern)]

    def __iter__(self):
        return (self.find(k) for k in self._bps)

    def __len__(self) -> int:
        return len(self._bps)
