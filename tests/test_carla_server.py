"""The CARLA backend without a CARLA server: a fake launcher process for the lifecycle, and mocks
autospec'd from the real carla 0.9.16 wheel (a misspelt or missing API call fails the test)."""

import itertools
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from unittest.mock import create_autospec

import carla
import pytest

from carla_env.carla_server.core import CarlaCore
from carla_env.carla_server.ports import PortError, is_free, lease_ports, pick_ports
from carla_env.carla_server.server import CarlaServer, ServerError, server_command
from carla_env.config import SimulatorConfig
from carla_env.simulator import SimulatorRestarted

FAKE_ROOT = Path(__file__).parent / "fake_carla"
ROOT = Path(__file__).resolve().parents[1]
BASE = 30000 + (os.getpid() % 400) * 40  # per test process, away from CARLA's defaults


def tcp_probe(host, port, timeout):
    socket.create_connection((host, port), timeout=timeout).close()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead for our purposes
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def wait_until(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


@pytest.fixture
def fake(monkeypatch, tmp_path):
    pids = tmp_path / "pids"
    monkeypatch.setenv("FAKE_CARLA_PIDS", str(pids))
    monkeypatch.setenv("FAKE_CARLA_MODE", "ok")

    def read_pids() -> list[int]:
        return (
            [int(p) for line in pids.read_text().splitlines() for p in line.split()] if pids.exists() else []
        )

    return read_pids


def new_server(tmp_path, base=BASE, rendering=False) -> CarlaServer:
    ports = pick_ports(base, base + 20, 0)
    cmd = server_command(str(FAKE_ROOT), ports, "Low", 0, rendering, [])
    return CarlaServer(cmd, ports, tmp_path / f"carla_{ports.rpc}.log")


# ------------------------------------------------------------------------------------------- ports
def test_ports_are_distinct_per_slot_and_a_taken_port_moves_the_slot():
    slots = [pick_ports(BASE, BASE + 20, k) for k in range(6)]
    used = [p for s in slots for p in s.all()]
    assert len(set(used)) == len(used)
    assert [s.rpc for s in slots] == [BASE + 3 * k for k in range(6)]
    with socket.socket() as squatter:  # another program holds slot 0's streaming port
        squatter.bind(("127.0.0.1", slots[0].streaming))
        moved = pick_ports(BASE, BASE + 20, 0)
        assert moved != slots[0] and slots[0].streaming not in moved.all()
        assert all(is_free(p) for p in moved.all())
        with pytest.raises(PortError, match="no free ports for CARLA server slot 0"):
            pick_ports(slots[0].rpc - 1, BASE + 20, 0, attempts=1)


def test_server_command_is_headless_with_its_ports_and_gpu():
    ports = pick_ports(BASE, BASE + 20, 1)
    cmd = server_command(str(FAKE_ROOT), ports, "Epic", 2, False, ["-benchmark"])
    assert cmd[0].endswith("CarlaUE4.sh") and "-nullrhi" in cmd and "-opengl" not in cmd
    assert f"-carla-rpc-port={ports.rpc}" in cmd and f"-carla-streaming-port={ports.streaming}" in cmd
    assert {"-quality-level=Epic", "-nosound", "-graphicsadapter=2", "-benchmark"} <= set(cmd)
    assert {"-stdout", "-FullStdOutLogOutput"} <= set(cmd)  # the engine's log into this server's own file
    assert "-RenderOffScreen" in server_command(str(FAKE_ROOT), ports, "Low", None, True, [])
    with pytest.raises(ServerError, match="no CarlaUE4.sh in /nowhere; set CARLA_ROOT"):
        server_command("/nowhere", ports, "Low", None, False, [])


# --------------------------------------------------------------------------------------- lifecycle
def test_stop_kills_the_servers_whole_group_and_nothing_else(fake, tmp_path):
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])  # e.g. a user's CARLA
    try:
        server = new_server(tmp_path)
        server.start()
        assert server.wait_ready(10, tcp_probe) < 10
        launcher, engine = fake()
        assert alive(launcher) and alive(engine) and not is_free(server.ports.rpc)
        server.stop()
        assert not alive(launcher) and not alive(engine)
        assert is_free(server.ports.rpc)
        assert bystander.poll() is None, "a process that is not ours was killed"
    finally:
        bystander.kill()


def test_stop_gives_the_engine_behind_the_launcher_its_grace_period(fake, tmp_path, monkeypatch):
    """CarlaUE4.sh exits at SIGTERM at once; the engine it started must still get time to shut down."""
    clean_exit = tmp_path / "engine-exit"
    monkeypatch.setenv("FAKE_CARLA_ENGINE_EXIT", str(clean_exit))
    server = new_server(tmp_path)
    server.start()
    server.wait_ready(10, tcp_probe)
    server.stop(grace=5.0)
    assert clean_exit.read_text() == "clean"
    assert not any(alive(p) for p in fake())


def test_a_server_that_exits_at_start_is_a_one_line_error(fake, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_CARLA_MODE", "exit")
    server = new_server(tmp_path)
    server.start()
    with pytest.raises(ServerError, match=r"exited with code 3 while starting; log: .*carla_\d+\.log"):
        server.wait_ready(10, tcp_probe)


def test_a_server_that_never_answers_hits_the_deadline_and_is_killed(fake, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_CARLA_MODE", "hang")
    server = new_server(tmp_path)
    server.start()
    t0 = time.monotonic()
    with pytest.raises(ServerError, match=r"did not answer within 2 s.*ready_timeout"):
        server.wait_ready(1.5, tcp_probe)
    assert time.monotonic() - t0 < 15
    assert fake() and not any(alive(p) for p in fake())


def test_killing_the_parent_leaves_no_orphan_server(fake, tmp_path):
    script = (
        "import sys; from pathlib import Path; sys.path.insert(0, sys.argv[1]);"
        "from tests.test_carla_server import new_server, tcp_probe;"
        "s = new_server(Path(sys.argv[2]), int(sys.argv[3])); s.start(); s.wait_ready(10, tcp_probe);"
        "print('ready', flush=True); import time; time.sleep(60)"
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", script, str(ROOT), str(tmp_path), str(BASE + 9)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert parent.stdout.readline().strip() == "ready"
    pids = fake()
    assert pids and all(alive(p) for p in pids)
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    assert wait_until(lambda: not any(alive(p) for p in pids), 15), "the server outlived its parent"


# ------------------------------------------------------------------------------------ core (mocks)
def mock_client_factory(town_map, clients: list):
    """carla.Client factory returning autospec'd client/world/TM; every client is kept in `clients`."""

    def factory(host, port):
        client = create_autospec(carla.Client, instance=True)
        world = create_autospec(carla.World, instance=True)
        tm = create_autospec(carla.TrafficManager, instance=True)
        library = create_autospec(carla.BlueprintLibrary, instance=True)
        blueprint = create_autospec(carla.ActorBlueprint, instance=True)
        blueprint.get_attribute.return_value.as_int.return_value = 4
        library.find.return_value = blueprint
        library.filter.return_value = [blueprint]
        hero = create_autospec(carla.Vehicle, instance=True)
        hero.id = 1
        hero.get_location.return_value = carla.Location(-1e4, -1e4, 0)
        hero.get_transform.return_value = carla.Transform(
            carla.Location(-1e4, -1e4, 0), carla.Rotation(yaw=30)
        )
        hero.get_velocity.return_value = carla.Vector3D(3.0, 4.0, 0.0)
        hero.bounding_box = carla.BoundingBox(carla.Location(), carla.Vector3D(2.4, 1.0, 0.8))
        actors = create_autospec(carla.ActorList, instance=True)
        actors.filter.return_value = []  # no other actor on this server
        world.get_actors.return_value = actors
        for method in ("get_world", "load_world", "generate_opendrive_world"):
            getattr(client, method).return_value = world
        client.get_trafficmanager.return_value = tm
        ids = itertools.count(100)  # actor ids as a server hands them out
        client.apply_batch_sync.side_effect = lambda commands, sync: [
            SimpleNamespace(actor_id=next(ids), error="") for _ in commands
        ]
        world.get_settings.return_value = carla.WorldSettings()
        world.get_map.return_value = town_map
        world.get_blueprint_library.return_value = library
        world.try_spawn_actor.return_value = hero
        world.tick.return_value = 42
        client.port, client.world, client.tm, client.hero = port, world, tm, hero
        clients.append(client)
        return client

    return factory


def core_config(town="GridTown03", **carla_keys) -> SimulatorConfig:
    return SimulatorConfig(
        backend="carla", town=town, timestep=0.05, traffic={"vehicles": 5}, carla=carla_keys
    )


class SpawnActor(SimpleNamespace):
    """carla.command.SpawnActor needs a server-made ActorBlueprint; this records what was asked."""

    def __init__(self, blueprint, transform, parent=None):
        assert isinstance(transform, carla.Transform)
        super().__init__(blueprint=blueprint, transform=transform, parent=parent)


@pytest.fixture(autouse=True)
def _spawn_command(monkeypatch):
    monkeypatch.setattr(carla.command, "SpawnActor", SpawnActor)


def make_core(tmp_path, clients, town="GridTown03", **carla_keys) -> CarlaCore:
    from carla_env.maps.town import load_town

    return CarlaCore(
        core_config(town, **carla_keys),
        client_factory=mock_client_factory(load_town("GridTown03").map, clients),
        probe=tcp_probe,
        log_dir=tmp_path,
    )


def test_core_goes_synchronous_before_the_first_tick_and_drives_npcs_on_its_tm_port(tmp_path):
    clients = []
    core = make_core(tmp_path, clients, launch=False, port=BASE, tm_port=BASE + 20)
    core.reset(seed=5)
    client = clients[0]
    world = client.world
    client.generate_opendrive_world.assert_called_once()  # a generated town goes to the server as OpenDRIVE
    # LibCarla bounds a map load by the client's time-out: 300 s around it, 10 s for every other call.
    timeouts = [c for c in client.mock_calls if c[0] in ("set_timeout", "generate_opendrive_world")]
    assert [(c[0], c.args[0] if c[0] == "set_timeout" else None) for c in timeouts] == [
        ("set_timeout", 10.0),
        ("set_timeout", 300.0),
        ("generate_opendrive_world", None),
        ("set_timeout", 10.0),
    ]
    params = client.generate_opendrive_world.call_args.args[1]
    assert not params.enable_pedestrian_navigation  # no walkers asked for: no slow navigation mesh
    names = [c[0] for c in world.mock_calls]
    assert names.index("apply_settings") < names.index("tick")
    settings = world.apply_settings.call_args[0][0]
    assert settings.synchronous_mode and settings.fixed_delta_seconds == pytest.approx(0.05)
    assert settings.substepping and settings.max_substeps * settings.max_substep_delta_time >= 0.05 - 1e-9
    assert settings.no_rendering_mode  # no camera
    client.get_trafficmanager.assert_called_with(BASE + 20)
    client.tm.set_synchronous_mode.assert_called_with(True)
    client.tm.set_random_device_seed.assert_called_with(5)
    world.tick.assert_called_with(10.0)  # a tick with a time-out, never an unbounded wait
    spawn, autopilot = [c.args[0] for c in client.apply_batch_sync.call_args_list]
    assert len(spawn) == 5 and all(isinstance(c, SpawnActor) for c in spawn)
    assert [(c.actor_id, c.enabled, c.tm_port) for c in autopilot] == [
        (100 + k, True, BASE + 20) for k in range(5)
    ]
    core.reset(seed=6)
    client.generate_opendrive_world.assert_called_once()  # same town: no reload (it leaks), actors respawned
    destroyed = client.apply_batch_sync.call_args_list[2].args[0]
    assert sorted(c.actor_id for c in destroyed) == [1, 100, 101, 102, 103, 104]


def test_core_close_destroys_actors_in_one_batch_and_turns_sync_off(tmp_path):
    clients = []
    core = make_core(tmp_path, clients, launch=False, port=BASE)
    core.reset(seed=1)
    client = clients[0]
    calls_before = len(client.apply_batch_sync.call_args_list)
    core.close()
    batches = client.apply_batch_sync.call_args_list[calls_before:]
    assert len(batches) == 1 and all(isinstance(c, carla.command.DestroyActor) for c in batches[0].args[0])
    assert not client.world.apply_settings.call_args[0][0].synchronous_mode
    client.tm.set_synchronous_mode.assert_called_with(False)
    client.tm.shut_down.assert_called_once_with()  # the process-wide TM registry keeps no stale TM


def test_walkers_walk_on_the_navigation_mesh_and_their_controllers_stop_before_destroy(tmp_path):
    clients = []
    core = make_core(tmp_path, clients, launch=False, port=BASE, walkers=3)
    client = clients[0]
    world = client.world
    world.get_random_location_from_navigation.side_effect = lambda: carla.Location(1.0, 2.0, 0.5)
    controllers = [create_autospec(carla.WalkerAIController, instance=True) for _ in range(3)]
    world.get_actors.return_value = controllers
    core.reset(seed=3)
    world.set_pedestrians_seed.assert_called_once_with(3)
    _, _, walkers, brains = [c.args[0] for c in client.apply_batch_sync.call_args_list]
    assert len(walkers) == 3 and all(w.transform.location.y == 2.0 for w in walkers)
    walker_ids = [105 + 5 + k for k in range(3)]  # after 5 vehicles and their 5 autopilot commands
    assert [b.parent for b in brains] == walker_ids  # each controller rides its walker
    names = [c[0] for c in world.mock_calls]
    first_start = min(i for i, n in enumerate(names) if n == "get_actors")
    assert "tick" in names[:first_start]  # a controller starts only after the tick that spawned it
    for c in controllers:
        c.start.assert_called_once_with()
        c.go_to_location.assert_called_once()
        assert 1.0 <= c.set_max_speed.call_args.args[0] <= 1.6
        c.stop.assert_not_called()
    calls_before = len(client.apply_batch_sync.call_args_list)
    core.close()
    for c in controllers:
        c.stop.assert_called_once_with()
    (destroyed,) = [c.args[0] for c in client.apply_batch_sync.call_args_list[calls_before:]]
    controller_ids = [113 + k for k in range(3)]
    assert [c.actor_id for c in destroyed] == [
        *(
            i for pair in zip(controller_ids, walker_ids, strict=True) for i in pair
        ),  # a controller before its walker
        *range(100, 105),
        1,
    ]


def test_an_opt_town_loads_with_the_configured_layers_from_its_base_road_network(tmp_path, monkeypatch):
    from carla_env.maps.town import CARLA_XODR_DIR, load_town

    opendrive = tmp_path / "carla" / CARLA_XODR_DIR
    opendrive.mkdir(parents=True)
    (opendrive / "Town01.xodr").write_text(load_town("GridTown03").xodr)
    monkeypatch.setenv("CARLA_ROOT", str(tmp_path / "carla"))
    clients = []
    core = make_core(
        tmp_path, clients, town="Town01_Opt", launch=False, port=BASE, map_layers=["Ground", "StreetLights"]
    )
    core.reset(seed=0)
    name, reset_settings, layers = clients[0].load_world.call_args.args
    assert (name, reset_settings) == ("Town01_Opt", True)
    assert layers == carla.MapLayer(int(carla.MapLayer.Ground) | int(carla.MapLayer.StreetLights))
    clients[0].generate_opendrive_world.assert_not_called()


def test_an_unknown_map_layer_is_refused_at_config_load():
    with pytest.raises(ValueError, match="map_layers"):
        core_config(map_layers=["Buildngs"])


def test_a_hung_tick_restarts_and_ends_the_episode(tmp_path):
    clients = []
    core = make_core(tmp_path, clients, launch=False, port=BASE, tick_timeout=2.0)
    core.reset(seed=1)
    clients[0].world.tick.side_effect = RuntimeError("time-out of 2000ms while waiting for the simulator")
    with pytest.raises(SimulatorRestarted, match="tick exceeded 2 s"):
        core.tick(carla.VehicleControl())
    assert core.health["restarts"] == 1 and len(clients) == 2
    core.reset(seed=2)
    assert core.tick(carla.VehicleControl()) == 42


def test_a_crashed_server_is_relaunched_mid_episode(fake, tmp_path):
    clients = []
    core = make_core(tmp_path, clients, carla_root=str(FAKE_ROOT), port=BASE + 12, tm_port=BASE + 32)
    core.reset(seed=1)
    first = core.server.pid
    launcher, engine = fake()
    os.kill(first, signal.SIGKILL)  # the server crashes; its engine child lingers in the group
    assert wait_until(lambda: not core.server.alive(), 5)
    with pytest.raises(SimulatorRestarted, match=rf"CARLA server \(pid {first}\) died"):
        core.tick(carla.VehicleControl())
    assert core.server.alive() and core.server.pid != first and not alive(engine)
    assert core.health["restarts"] == 1
    core.close()
    assert not any(alive(p) for p in fake())


def test_servers_are_recycled_after_n_episodes(fake, tmp_path):
    clients = []
    core = make_core(tmp_path, clients, carla_root=str(FAKE_ROOT), port=BASE + 24, recycle_episodes=2)
    pids = []
    for seed in range(3):
        core.reset(seed=seed)
        pids.append(core.server.pid)
    assert pids[0] == pids[1] != pids[2] and core.health["restarts"] == 1
    core.close()
    assert not any(alive(p) for p in fake())


@pytest.mark.parametrize(
    ("args", "carla_root", "message"),
    [
        ([], None, "carla-smoke needs a CARLA install: set CARLA_ROOT to the CARLA 0.9.16 release folder"),
        (["--frames", "0"], str(FAKE_ROOT), "carla-smoke: --frames 0: give at least 1"),
        (["--frames", "10", "--kill-at", "10"], str(FAKE_ROOT), "carla-smoke: --kill-at 10: must be below"),
        (["--envs", "0"], str(FAKE_ROOT), "carla-smoke: --envs 0: give at least 1"),
        (["--frames", "ten"], str(FAKE_ROOT), "carla-smoke: argument --frames: invalid int value: 'ten'"),
        ([], "/nowhere", "carla-smoke: no CarlaUE4.sh in /nowhere; set CARLA_ROOT"),
    ],
)
def test_carla_smoke_bad_arguments_exit_2_with_one_line(args, carla_root, message):
    env = {k: v for k, v in os.environ.items() if k != "CARLA_ROOT"}
    if carla_root:
        env["CARLA_ROOT"] = carla_root
    proc = subprocess.run(
        [sys.executable, "-m", "carla_env.carla_server.smoke", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
    )
    assert proc.returncode == 2 and proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) == 1 and proc.stderr.startswith(message)


def test_carla_smoke_kills_the_engine_behind_the_launcher(fake, tmp_path):
    """What `make carla-smoke` does mid-run: SIGKILL the engine, not the launcher script."""
    from carla_env.carla_server.smoke import kill_engine

    server = new_server(tmp_path)
    server.start()
    server.wait_ready(10, tcp_probe)
    launcher, engine = fake()
    try:
        assert kill_engine(server) == [engine]
        assert wait_until(lambda: not alive(engine), 5) and alive(launcher)
    finally:
        server.stop()


def test_stream_sensors_are_mounted_configured_and_matched_by_frame():
    """Camera data comes back for the frame asked for, never by queue order; a late frame times out."""
    import threading

    from carla_env.sensors.factory import StreamSensor, make_sensor

    world = create_autospec(carla.World, instance=True)
    library = create_autospec(carla.BlueprintLibrary, instance=True)
    blueprint = create_autospec(carla.ActorBlueprint, instance=True)
    world.get_blueprint_library.return_value = library
    library.find.return_value = blueprint
    camera = create_autospec(carla.Sensor, instance=True)
    world.spawn_actor.return_value = camera
    hero = create_autospec(carla.Vehicle, instance=True)
    from carla_env.config import SensorConfig

    attrs = {"image_size_x": 320, "fov": 90, "x": 1.5, "z": 2.4, "pitch": -10}
    core = SimpleNamespace(
        backend="carla", sensor_types=CarlaCore.sensor_types, world=world, hero=hero, restart=None
    )
    sensor = make_sensor("front", SensorConfig(type="sensor.camera.rgb", **attrs), core, 0.05)
    assert isinstance(sensor, StreamSensor)
    library.find.assert_called_once_with("sensor.camera.rgb")
    assert sorted(c.args for c in blueprint.set_attribute.call_args_list) == [
        ("fov", "90"),
        ("image_size_x", "320"),
    ]
    at = world.spawn_actor.call_args.args[1]
    assert (at.location.x, at.location.z, at.rotation.pitch) == pytest.approx((1.5, 2.4, -10.0))
    assert world.spawn_actor.call_args.kwargs["attach_to"] is hero
    deliver = camera.listen.call_args.args[0]
    for frame in (7, 8, 9):  # out of order, from the client's thread, as CARLA does
        threading.Thread(target=deliver, args=(SimpleNamespace(frame=frame, data=f"img{frame}"),)).start()
    assert sensor.read(8) == (8, SimpleNamespace(frame=8, data="img8"))
    assert sensor.read(9)[1].data == "img9"  # frame 7 was dropped as stale, not returned
    sensor.timeout = 0.2
    with pytest.raises(TimeoutError, match="sensor 'front': no data for frame 10"):
        sensor.read(10)
    camera.is_alive = True
    sensor.destroy()
    camera.stop.assert_called_once_with()
    camera.destroy.assert_called_once_with()


def _event_sensor(blueprint_id="sensor.other.lane_invasion"):
    from carla_env.sensors.factory import EventSensor

    world = create_autospec(carla.World, instance=True)
    sensor_actor = create_autospec(carla.Sensor, instance=True)
    world.spawn_actor.return_value = sensor_actor
    sensor = EventSensor("lanes", world, create_autospec(carla.Vehicle, instance=True), blueprint_id)
    return sensor, sensor_actor.listen.call_args.args[0]


def test_an_event_that_arrives_after_its_frame_was_read_comes_with_the_next_read():
    """LibCarla computes lane invasions after world.tick() returns: frame 5's event lands after read(5)."""
    import threading

    sensor, deliver = _event_sensor()
    deliver(SimpleNamespace(frame=4, kind="early"))
    assert [e.kind for e in sensor.read(5)[1]] == ["early"]
    late = threading.Thread(target=deliver, args=(SimpleNamespace(frame=5, kind="late"),))
    late.start()
    late.join()
    deliver(SimpleNamespace(frame=7, kind="future"))  # a frame not yet read stays for its own read
    deliver(SimpleNamespace(frame=6, kind="on time"))
    assert [(e.frame, e.kind) for e in sensor.read(6)[1]] == [(5, "late"), (6, "on time")]
    assert [e.kind for e in sensor.read(7)[1]] == ["future"]
    assert sensor.read(8) == (8, [])


def test_no_event_is_lost_while_the_callback_thread_appends_during_reads():
    import threading

    sensor, deliver = _event_sensor("sensor.other.collision")
    total, frames = 20000, 200
    got = []

    def stream():  # LibCarla's thread: events of frames being read now, a little late, out of order
        for k in range(total):
            deliver(SimpleNamespace(frame=(k * frames) // total + (k % 3) - 1))

    producer = threading.Thread(target=stream)
    producer.start()
    frame = 0
    while producer.is_alive():
        got += sensor.read(frame)[1]
        frame += 1
    producer.join()
    got += sensor.read(frame + frames)[1]
    assert len(got) == total


@pytest.mark.parametrize("timestep", [0.01, 0.05, 0.1, 0.25, 0.5])
def test_substep_settings_cover_the_timestep_within_carlas_limits(tmp_path, timestep):
    """CARLA's physics needs fixed_delta_seconds <= max_substep_delta_time * max_substeps (<= 16)."""
    clients = []
    config = core_config(launch=False, port=BASE).model_copy(update={"timestep": timestep})
    from carla_env.maps.town import load_town

    CarlaCore(config, client_factory=mock_client_factory(load_town("GridTown03").map, clients)).reset(seed=0)
    s = clients[0].world.apply_settings.call_args.args[0]
    assert s.substepping and 1 <= s.max_substeps <= 16 and s.max_substep_delta_time <= 0.01 + timestep / 16
    assert s.fixed_delta_seconds <= s.max_substep_delta_time * s.max_substeps + 1e-9


def test_walkers_get_a_navigation_mesh_in_a_generated_town(tmp_path):
    clients = []
    core = make_core(tmp_path, clients, launch=False, port=BASE, walkers=2)
    clients[0].world.get_random_location_from_navigation.return_value = None  # no sidewalk in the mock
    core.reset(seed=0)
    assert clients[0].generate_opendrive_world.call_args.args[1].enable_pedestrian_navigation


def test_a_map_load_that_times_out_relaunches_and_retries_once(tmp_path):
    from carla_env.maps.town import load_town

    clients = []
    factory = mock_client_factory(load_town("GridTown03").map, [])

    def flaky(host, port):  # the first server's map load times out, the next one's works
        client = factory(host, port)
        clients.append(client)
        if len(clients) == 1:
            client.generate_opendrive_world.side_effect = RuntimeError(
                "failed to connect to newly created map"
            )
        return client

    core = CarlaCore(core_config(launch=False, port=BASE), client_factory=flaky)
    core.reset(seed=0)
    assert len(clients) == 2 and core.health["restarts"] == 1
    clients[0].tm.shut_down.assert_not_called()  # no TM was made on the failed client
    assert core.tick(carla.VehicleControl()) == 42 and core.hero is clients[1].hero


def test_a_hung_walker_tick_in_reset_relaunches_and_a_second_failure_is_a_clear_error(tmp_path):
    clients = []
    core = make_core(tmp_path, clients, launch=False, port=BASE, walkers=2)
    original = core._client_factory  # noqa: SLF001

    def hung(host, port):  # every server hangs in the tick that starts the walkers' controllers
        client = original(host, port)
        client.world.get_random_location_from_navigation.return_value = carla.Location(1, 2, 0)
        client.world.tick.side_effect = RuntimeError("time-out of 10000ms while waiting for the simulator")
        return client

    core._client_factory = hung  # noqa: SLF001
    clients[0].world.get_random_location_from_navigation.return_value = carla.Location(1, 2, 0)
    clients[0].world.tick.side_effect = RuntimeError("time-out of 10000ms while waiting for the simulator")
    with pytest.raises(
        ServerError, match=r"CARLA slot 0: reset failed again on a relaunched server: .*time-out"
    ):
        core.reset(seed=0)
    assert core.health["restarts"] == 1  # relaunched once, not forever
    clients[0].tm.shut_down.assert_called_once_with()  # the old TM went before its client


def test_a_server_that_died_between_episodes_is_relaunched_by_reset(fake, tmp_path):
    clients = []
    core = make_core(tmp_path, clients, carla_root=str(FAKE_ROOT), port=BASE + 15, tm_port=BASE + 35)
    core.reset(seed=1)
    first = core.server.pid
    os.kill(first, signal.SIGKILL)
    assert wait_until(lambda: not core.server.alive(), 5)
    clients[0].apply_batch_sync.side_effect = RuntimeError(
        "rpc::rpc_error during call in function apply_batch"
    )
    core.reset(seed=2)  # neither a plain RuntimeError nor SimulatorRestarted out of reset
    assert core.server.alive() and core.server.pid != first and core.health["restarts"] == 1
    assert len(clients) == 2 and core.hero is clients[1].hero
    clients[0].tm.shut_down.assert_called_once_with()
    core.close()
    assert not any(alive(p) for p in fake())


def test_a_relaunch_shuts_the_old_traffic_manager_down_before_its_new_client(tmp_path):
    clients = []
    core = make_core(tmp_path, clients, launch=False, port=BASE, tick_timeout=2.0)
    core.reset(seed=1)
    old_tm = clients[0].tm
    old_tm.shut_down.side_effect = lambda: clients.append("tm shut down")
    clients[0].world.tick.side_effect = RuntimeError("time-out")
    with pytest.raises(SimulatorRestarted):
        core.tick(carla.VehicleControl())
    assert clients[1] == "tm shut down" and core.tm is clients[2].tm


def test_traffic_keeps_clear_of_the_heros_spawn_transform_not_its_unticked_location(tmp_path):
    """Right after spawn a CARLA actor's get_location() is (0, 0, 0) until the next tick."""
    clients = []
    config = core_config(launch=False, port=BASE).model_copy(
        update={"traffic": core_config().traffic.model_copy(update={"vehicles": 500})}
    )
    from carla_env.maps.town import load_town

    town = load_town("GridTown03")
    core = CarlaCore(config, client_factory=mock_client_factory(town.map, clients))
    clients[0].hero.get_location.return_value = carla.Location(0, 0, 0)
    spawn_at = town.spawn_points(seed=1)[3]
    core.reset(seed=0, hero_transform=spawn_at)
    placed = [c.transform.location for c in clients[0].apply_batch_sync.call_args_list[0].args[0]]
    assert placed and min(p.distance(spawn_at.location) for p in placed) > 10.0


NVIDIA_SMI_L = """GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-aaaa-0000)
GPU 1: NVIDIA H100 80GB HBM3 (UUID: GPU-bbbb-1111)
  MIG 3g.40gb     Device  0: (UUID: MIG-cccc-2222)
  MIG 3g.40gb     Device  1: (UUID: MIG-dddd-3333)
"""


def test_gpu_and_mig_uuids_in_cuda_visible_devices_name_their_physical_gpu(tmp_path, monkeypatch):
    from carla_env.carla_server.core import visible_gpus

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    smi = bin_dir / "nvidia-smi"
    smi.write_text(f"#!/bin/sh\ncat <<'END'\n{NVIDIA_SMI_L}END\n")
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "MIG-cccc-2222")
    assert visible_gpus() == [1]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-bbbb-1111,GPU-aaaa-0000")
    assert visible_gpus() == [1, 0]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,0")
    assert visible_gpus() == [2, 0]


def test_an_unresolvable_gpu_uuid_launches_without_an_adapter_flag(fake, tmp_path, monkeypatch):
    (tmp_path / "nvidia-smi").write_text("#!/bin/sh\nexit 9\n")  # a driver that lists nothing
    (tmp_path / "nvidia-smi").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-not-listed")
    record = tmp_path / "argv"
    monkeypatch.setenv("FAKE_CARLA_RECORD", str(record))
    clients = []
    core = make_core(tmp_path, clients, carla_root=str(FAKE_ROOT), port=BASE + 18, tm_port=BASE + 33)
    try:
        assert "-graphicsadapter" not in record.read_text()
    finally:
        core.close()


def test_env_runner_restarts_are_bounded_and_only_for_the_carla_backend():
    """The outer net for a LibCarla abort; an embedded env's error is deterministic and fails fast."""
    from ray.rllib.algorithms.ppo import PPOConfig

    from carla_env.config import Config
    from carla_env.rllib.algorithm import runner_fault_tolerance

    carla_run = Config(simulator={"backend": "carla", "carla": {"runner_restarts": 3}})
    algo = PPOConfig().fault_tolerance(**runner_fault_tolerance(carla_run))
    assert algo.restart_failed_env_runners and algo.max_num_env_runner_restarts == 3
    embedded = PPOConfig().fault_tolerance(
        **runner_fault_tolerance(Config(simulator={"backend": "embedded"}))
    )
    assert not embedded.restart_failed_env_runners


def test_two_envs_of_one_runner_launching_at_once_get_their_own_servers(fake, tmp_path, monkeypatch):
    """RLlib gives every env of a runner the same slot; both pick ports before either server binds."""
    import threading

    monkeypatch.setenv("FAKE_CARLA_MODE", "slow:1.0")
    cores, errors = [], []

    def launch():
        try:
            cores.append(make_core(tmp_path, [], carla_root=str(FAKE_ROOT), port=BASE + 3, tm_port=BASE + 23))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=launch) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert not errors
        a, b = (c.server for c in cores)
        assert a.ports.rpc != b.ports.rpc and a.ports.tm != b.ports.tm
        assert a.alive() and b.alive()
    finally:
        for c in cores:
            c.close()
    # the leases went with the servers: the slot's own ports are free for the next launch
    lease = lease_ports(BASE + 3, BASE + 23, 0)
    assert lease.ports == pick_ports(BASE + 3, BASE + 23, 0)
    lease.release()


def test_attaching_several_envs_of_a_runner_to_one_server_is_refused_at_pin_time():
    from carla_env.backends import pin_backend
    from carla_env.config import Config, ConfigError

    config = Config(
        simulator={"backend": "carla", "carla": {"launch": False}}, training={"envs_per_runner": 2}
    )
    with pytest.raises(ConfigError, match=r"simulator\.carla\.launch: false .*training\.envs_per_runner: 2"):
        pin_backend(config, "run.yaml")
    pin_backend(
        config.model_copy(update={"training": config.training.model_copy(update={"envs_per_runner": 1})})
    )


def test_the_birdview_scene_puts_boxes_at_their_centre_and_skips_lights_without_a_numeric_id():
    from carla_env.maps.town import load_town
    from carla_env.sensors.scene import scene_from_world

    lanes = load_town("GridTown03").lanes
    known = int(lanes.light_id[0])

    def actor(kind, yaw=0.0, box_at=(0.0, 0.0, 0.0)):
        a = create_autospec(kind, instance=True)
        a.id = id(a)
        a.get_transform.return_value = carla.Transform(carla.Location(10, 20, 0), carla.Rotation(yaw=yaw))
        a.get_velocity.return_value = carla.Vector3D(0, 0, 0)
        a.bounding_box = carla.BoundingBox(carla.Location(*box_at), carla.Vector3D(2.0, 1.0, 0.7))
        return a

    hero = actor(carla.Vehicle)
    other = actor(carla.Vehicle, yaw=90.0, box_at=(1.5, 0.0, 0.7))  # box ahead of its origin
    other.get_velocity.return_value = carla.Vector3D(0.0, 6.0, 0.0)
    lights = []
    for opendrive_id, state in (("", carla.TrafficLightState.Green), ("sig-7", carla.TrafficLightState.Red)):
        light = create_autospec(carla.TrafficLight, instance=True)
        light.get_opendrive_id.return_value, light.get_state.return_value = opendrive_id, state
        lights.append(light)
    lights.append(create_autospec(carla.TrafficLight, instance=True))
    lights[-1].get_opendrive_id.return_value, lights[-1].get_state.return_value = (
        str(known),
        carla.TrafficLightState.Yellow,
    )
    by_kind = {"vehicle.*": [hero, other], "walker.*": [], "traffic.traffic_light*": lights}
    world = create_autospec(carla.World, instance=True)
    world.get_actors.return_value.filter.side_effect = lambda pattern: by_kind[pattern]
    scene = scene_from_world(world, hero, lanes)
    assert scene.vehicles[0][:2] == pytest.approx((10.0, 21.5))  # yaw 90: 1.5 m ahead is +y
    assert scene.vehicle_velocities.tolist() == [[0.0, 6.0]]  # the reward's vehicle gap projects it
    assert scene.light_states[0] == int(carla.TrafficLightState.Yellow)
    assert (scene.light_states[1:] == -1).all()


def test_a_camera_that_stops_streaming_truncates_the_episode_like_a_restart(monkeypatch):
    """A stream read past its time-out replaces the server (core.restart) and step() truncates."""
    from carla_env import env as env_module
    from carla_env.config import load_config
    from carla_env.embedded.core import EmbeddedCore
    from carla_env.env import CarlaEnv
    from carla_env.sensors.factory import StreamSensor

    restarts = []

    def restart(reason):
        restarts.append(reason)
        raise SimulatorRestarted(reason)

    monkeypatch.setattr(
        env_module, "make_core", lambda config, blueprint, **kw: EmbeddedCore(config, blueprint)
    )
    env = CarlaEnv(
        load_config(ROOT / "experiments" / "dqn" / "config.yaml", {"simulator": {"backend": "embedded"}})
    )
    env.reset(seed=0)
    world = create_autospec(carla.World, instance=True)
    world.spawn_actor.return_value = create_autospec(carla.Sensor, instance=True)
    env.sensors["front"] = StreamSensor(
        "front", world, env.core.hero, "sensor.camera.rgb", {}, timeout=0.2, restart=restart
    )
    obs, reward, terminated, truncated, info = env.step(0)
    assert truncated and not terminated and reward == 0.0
    assert info["simulator_restart"].startswith("sensor 'front': no data for frame") and len(restarts) == 1
    env.close()


def test_a_carla_cores_camera_read_timeout_relaunches_its_server(tmp_path):
    from carla_env.config import SensorConfig
    from carla_env.sensors.factory import make_sensor

    clients = []
    core = make_core(tmp_path, clients, launch=False, port=BASE)
    core.reset(seed=0)
    camera = make_sensor("front", SensorConfig(type="sensor.camera.rgb"), core, 0.05)
    camera.timeout = 0.1
    with pytest.raises(SimulatorRestarted, match="sensor 'front': no data for frame 42"):
        camera.read(core.tick(None))
    assert core.health["restarts"] == 1 and len(clients) == 2


def test_a_port_that_answers_from_another_program_is_not_taken_for_our_server(fake, tmp_path, monkeypatch):
    """Another program took the RPC port before our server bound it: its answer must not pass as ours."""
    monkeypatch.setenv("FAKE_CARLA_MODE", "hang")  # our server never binds
    server = new_server(tmp_path, base=BASE + 6)
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", server.ports.rpc))
        squatter.listen(8)
        server.start()
        with pytest.raises(
            ServerError, match=rf"port {server.ports.rpc} answers, but not from the CARLA server"
        ):
            server.wait_ready(5, tcp_probe)
    assert not any(alive(p) for p in fake())


def test_a_relaunch_whose_fresh_server_fails_too_is_a_clear_error(tmp_path):
    clients = []
    core = make_core(tmp_path, clients, launch=False, port=BASE, tick_timeout=2.0)
    core.reset(seed=1)
    original = core._client_factory  # noqa: SLF001

    def cold(host, port):  # the relaunched server never finishes loading the map
        client = original(host, port)
        client.generate_opendrive_world.side_effect = RuntimeError("failed to connect to newly created map")
        return client

    core._client_factory = cold  # noqa: SLF001
    clients[0].world.tick.side_effect = RuntimeError("time-out of 2000ms while waiting for the simulator")
    with pytest.raises(
        ServerError, match=r"CARLA slot 0: relaunch after 'tick exceeded 2 s.*' failed: failed to"
    ):
        core.tick(carla.VehicleControl())
