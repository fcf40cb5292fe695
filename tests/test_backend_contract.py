"""One conformance suite over every backend: what CarlaEnv, experiments and sensors rely on of a core
(carla_env.simulator.SimulatorCore). The CARLA core runs on autospec'd carla 0.9.16 mocks, attached
to a server or launching the fake one, in process or (the default) in a child process; the embedded
core runs for real."""

import carla
import numpy as np
import pytest

from carla_env.carla_server.core import CarlaCore
from carla_env.carla_server.isolated import IsolatedCarlaCore
from carla_env.config import BirdviewConfig, SensorConfig, SimulatorConfig
from carla_env.embedded.core import EmbeddedCore
from carla_env.maps.town import load_town
from carla_env.sensors.birdview import Scene
from carla_env.sensors.factory import BirdviewSensor, EventSensor, make_sensor
from carla_env.simulator import BIRDVIEW, EVENT_SENSORS, SimulatorCore
from tests.fake_carla_client import make_client
from tests.test_carla_server import BASE, FAKE_ROOT, _spawn_command, fake, mock_client_factory, tcp_probe  # noqa: F401

TOWN = "GridTown03"


def embedded_core(tmp_path, request):
    return EmbeddedCore(
        SimulatorConfig(backend="embedded", town=TOWN, timestep=0.05, traffic={"vehicles": 5})
    )


def carla_core(tmp_path, request, **server):
    config = SimulatorConfig(backend="carla", town=TOWN, timestep=0.05, traffic={"vehicles": 5}, carla=server)
    return CarlaCore(
        config,
        client_factory=mock_client_factory(load_town(TOWN).map, []),
        probe=tcp_probe,
        log_dir=tmp_path,
    )


def attached_carla_core(tmp_path, request):
    return carla_core(tmp_path, request, launch=False, port=BASE + 36)


def launched_carla_core(tmp_path, request):
    request.getfixturevalue("fake")  # the fake CarlaUE4.sh: a real process group with a TCP port
    return carla_core(tmp_path, request, carla_root=str(FAKE_ROOT), port=BASE + 30, tm_port=BASE + 38)


def isolated_carla_core(tmp_path, request):
    """The default CARLA core: the fake server launched, the client in a real child process."""
    request.getfixturevalue("fake")
    config = SimulatorConfig(
        backend="carla",
        town=TOWN,
        timestep=0.05,
        traffic={"vehicles": 5},
        carla={"carla_root": str(FAKE_ROOT), "port": BASE + 30, "tm_port": BASE + 38},
    )
    return IsolatedCarlaCore(config, client_factory=make_client, log_dir=tmp_path)


@pytest.fixture(
    params=[embedded_core, attached_carla_core, launched_carla_core, isolated_carla_core],
    ids=lambda f: f.__name__,
)
def core(request, tmp_path):
    core = request.param(tmp_path, request)
    yield core
    core.close()


def test_a_core_satisfies_the_protocol_and_declares_its_sensors(core):
    assert isinstance(core, SimulatorCore)
    assert core.backend in ("embedded", "carla")
    assert set(EVENT_SENSORS) | {BIRDVIEW} <= set(core.sensor_types)
    assert core.town.name == TOWN and isinstance(core.town.map, carla.Map)


def test_an_episode_through_the_contract(core):
    core.reset(seed=3)
    assert isinstance(core.map, carla.Map)
    hero = core.hero
    assert isinstance(hero.get_transform(), carla.Transform)
    frame = core.tick(carla.VehicleControl(throttle=0.5))
    assert isinstance(frame, int)
    assert core.tick(None) >= frame  # None keeps the last control
    assert isinstance(core.on_driving_lane(hero), bool)
    scene = core.birdview_scene(hero)
    assert isinstance(scene, Scene)
    assert scene.ego.shape == (5,) and scene.vehicles.ndim == 2 and scene.vehicles.shape[1] == 5
    assert scene.light_states.shape == (len(core.town.lanes.light_id),)
    assert scene.ego_speed >= 0.0
    assert scene.walker_velocities.shape == (len(scene.walkers), 2)
    assert core.birdview_scene(hero) is scene  # built once a tick, however many ask
    core.tick(None)
    assert core.birdview_scene(hero) is not scene
    stats = core.stats()
    assert isinstance(stats, dict) and all(isinstance(v, float) for v in stats.values())
    core.reset(seed=4)  # a second episode on the same core
    assert core.hero is not None


def test_sensors_mount_on_any_core_through_the_same_factory(core):
    core.reset(seed=3)
    bev_config = BirdviewConfig(packed=True)
    bev = make_sensor("birdview", bev_config, core, 0.05)
    assert isinstance(bev, BirdviewSensor)
    frame = core.tick(carla.VehicleControl())
    got_frame, obs = bev.read(frame)
    assert got_frame == frame and bev_config.observation_space().contains(obs)
    collision = make_sensor("collision", SensorConfig(type="sensor.other.collision"), core, 0.05)
    assert isinstance(collision, EventSensor)
    assert collision.read(frame) == (frame, [])
    collision.destroy()
    bev.destroy()


def test_a_sensor_the_core_does_not_offer_is_refused_by_name(core):
    core.reset(seed=3)
    missing = "sensor.other.rss"
    assert missing not in core.sensor_types
    with pytest.raises(
        ValueError, match=rf"sensor 'x': '{missing}' is not available on the {core.backend} backend"
    ):
        make_sensor("x", SensorConfig(type=missing), core, 0.05)


def test_the_bev_of_the_same_state_is_the_same_pixels_on_both_scene_paths():
    """The embedded core's array scene and the CARLA API scene (what the carla core renders) agree."""
    from carla_env.sensors.scene import scene_from_world

    core = EmbeddedCore(
        SimulatorConfig(
            backend="embedded", town=TOWN, timestep=0.05, traffic={"vehicles": 5}, carla={"walkers": 10}
        )
    )
    core.reset(seed=5)
    for _ in range(5):
        core.tick(carla.VehicleControl(throttle=0.6))
    ours = core.birdview_scene(core.hero)
    theirs = scene_from_world(core.world, core.hero, core.town.lanes)
    np.testing.assert_allclose(ours.ego, theirs.ego, atol=1e-6)
    np.testing.assert_allclose(ours.vehicles, theirs.vehicles, atol=1e-6)
    assert len(ours.walkers) == 10 and np.abs(ours.walker_velocities).max() > 0.5  # walking
    np.testing.assert_allclose(ours.walkers, theirs.walkers, atol=1e-6)
    np.testing.assert_allclose(ours.walker_velocities, theirs.walker_velocities, atol=1e-6)
    np.testing.assert_array_equal(ours.light_states, theirs.light_states)
    core.close()
