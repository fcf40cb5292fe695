"""The backend contract: everything CarlaEnv, experiments and sensors use of a simulator core.

Every core satisfies it: `carla_env.embedded.core.EmbeddedCore`, and on CARLA
`carla_env.carla_server.isolated.IsolatedCarlaCore` (its client in a child process, the default) or
`carla_env.carla_server.core.CarlaCore` (its client in this process); tests/test_backend_contract.py
runs the same checks over each. Nothing outside a backend tells them apart: what differs (sensors on
offer, server statistics) is declared here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Protocol, runtime_checkable

import carla

if TYPE_CHECKING:
    from carla_env.maps.town import Town
    from carla_env.sensors.birdview import Scene

# Sensor blueprints by kind; each core declares which it offers in `sensor_types`.
EVENT_SENSORS = ("sensor.other.collision", "sensor.other.lane_invasion")
BIRDVIEW = "sensor.birdview"
# A real CARLA server's: streams with data every frame, and one more event sensor.
STREAM_SENSORS = (
    "sensor.camera.rgb",
    "sensor.camera.depth",
    "sensor.camera.semantic_segmentation",
    "sensor.lidar.ray_cast",
    "sensor.other.radar",
    "sensor.other.gnss",
    "sensor.other.imu",
)
OBSTACLE_SENSOR = "sensor.other.obstacle"


class SimulatorRestarted(RuntimeError):
    """A backend replaced its crashed or hung simulator; the running episode is over (reason in the message)."""


@runtime_checkable
class SimulatorCore(Protocol):
    """A simulator backend ("core"): owns the world, the hero and its traffic; CARLA-API objects out."""

    backend: ClassVar[str]  # "embedded" or "carla": saved with a run, printed at start
    sensor_types: ClassVar[tuple[str, ...]]  # sensor blueprint ids this backend can mount

    town: Town  # the loaded town: name, OpenDRIVE text, carla.Map, lane graph
    world: carla.World  # (or the embedded world, which answers the same calls); None before reset
    map: carla.Map
    hero: carla.Vehicle  # None before reset

    def reset(self, seed: int | None = None, hero_transform: carla.Transform | None = None) -> None:
        """A new episode: hero at `hero_transform` (else a seeded spawn point), fresh background traffic."""

    def tick(self, control: carla.VehicleControl | None) -> int:
        """Apply the hero's control (None: keep the last), advance one fixed step, return the frame id.
        Raises SimulatorRestarted when the simulator had to be replaced."""

    def on_driving_lane(self, actor: carla.Actor) -> bool:
        """Whether the actor's centre is on a driving lane (off-road detection)."""

    def birdview_scene(self, hero: carla.Actor) -> Scene:
        """What the bird's-eye view of `hero` shows this frame, as arrays (same on every backend)."""

    def stats(self) -> dict[str, float]:
        """Health figures logged with the driving metrics (server restarts, tick latency); {} if none."""

    def close(self) -> None:
        """Destroy the actors and release the simulator (a launched server is killed)."""
