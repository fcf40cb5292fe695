"""The CARLA client in a child process (simulator.carla.isolate_client): real child processes, the
real carla 0.9.16 wheel, the fake server process (tests/fake_carla/CarlaUE4.sh). In the children the
client is tests/fake_carla_client.py (autospec'd from the wheel, ticking against the fake server),
except where the test says it is the wheel's own carla.Client. In this (parent) process carla.Client
raises: nothing here may build one."""

import gc
import os
import signal
import time
from pathlib import Path

import carla
import pytest

from carla_env import env as env_module
from carla_env.backends import make_core
from carla_env.carla_server.client_process import ActorSnapshot
from carla_env.carla_server.core import CarlaCore
from carla_env.carla_server.isolated import IsolatedCarlaCore
from carla_env.carla_server.server import ServerError
from carla_env.config import SimulatorConfig, load_config
from carla_env.env import CarlaEnv
from tests.fake_carla_client import make_client
from tests.test_carla_server import BASE, FAKE_ROOT, ROOT, alive, fake, wait_until  # noqa: F401 - fake: the fixture

CLIENT = carla.Client  # the wheel's class, before the fixture below replaces it


def clients_in_this_process() -> list:
    gc.collect()
    return [o for o in gc.get_objects() if type(o) is CLIENT]  # an autospec'd mock is not one


@pytest.fixture(autouse=True)
def no_client_in_this_process(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the parent process built a carla.Client")

    monkeypatch.setattr(carla, "Client", refuse)


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def carla_env(tmp_path, monkeypatch, port: int, **server) -> CarlaEnv:
    """The DQN experiment (BEV, collision and lane-invasion sensors) on the carla backend, launching
    the fake server, its client the fake one in a child process."""
    monkeypatch.setattr(
        env_module,
        "make_core",
        lambda config, blueprint, **kw: IsolatedCarlaCore(
            config, blueprint, client_factory=make_client, log_dir=tmp_path, **kw
        ),
    )
    config = load_config(
        ROOT / "experiments" / "dqn" / "config.yaml",
        {
            "simulator": {
                "backend": "carla",
                "traffic": {"vehicles": 5},
                "carla": {"carla_root": str(FAKE_ROOT), "port": port, "tm_port": port + 20, **server},
            }
        },
    )
    return CarlaEnv(config)


def fake_server_core(tmp_path, port: int, rendering: bool = False, **carla) -> IsolatedCarlaCore:
    """An isolated core on the fake server at BASE + port (its TM at 10 above), GridTown03."""
    config = SimulatorConfig(
        backend="carla",
        town="GridTown03",
        carla={"carla_root": str(FAKE_ROOT), "port": BASE + port, "tm_port": BASE + port + 10, **carla},
    )
    return IsolatedCarlaCore(config, client_factory=make_client, log_dir=tmp_path, rendering=rendering)


def test_the_parent_builds_no_client_and_the_child_holds_the_wheels_own():
    config = SimulatorConfig(
        backend="carla", town="GridTown03", carla={"launch": False, "port": BASE + 27, "client_timeout": 1.0}
    )
    core = IsolatedCarlaCore(config)  # the default factory: carla.Client, in the child
    try:
        info = core.client_info()
        assert info["client_type"] == "carla.libcarla.Client" and info["client_version"].startswith("0.9.16")
        assert info["pid"] == core.client_process.pid != os.getpid()
        assert parent_of(info["pid"]) == os.getpid() and alive(info["pid"])
    finally:
        core.close()
    assert not alive(info["pid"])


def test_make_core_isolates_the_client_unless_the_config_opts_out(monkeypatch):
    attached = {"launch": False, "port": BASE + 27}
    isolated = make_core(SimulatorConfig(backend="carla", town="GridTown03", carla=attached))
    try:
        assert isinstance(isolated, IsolatedCarlaCore)
    finally:
        isolated.close()
    monkeypatch.undo()  # the in-process core builds its client here, as asked
    in_process = make_core(
        SimulatorConfig(backend="carla", town="GridTown03", carla={**attached, "isolate_client": False})
    )
    assert isinstance(in_process, CarlaCore) and clients_in_this_process() == [in_process.client]
    in_process.close()


def test_a_client_process_killed_mid_episode_truncates_and_the_next_reset_works(fake, tmp_path, monkeypatch):  # noqa: F811
    """SIGKILL stands in for a LibCarla abort (carla#4577): only the child dies; the env relaunches
    server and child, truncates the episode, and drives the next one."""
    env = carla_env(tmp_path, monkeypatch, BASE + 12)
    try:
        obs, info = env.reset(seed=0)
        assert env.observation_space.contains(obs) and info["backend"] == "carla"
        collisions = 0
        for _ in range(6):  # the fake client reports a collision every 3rd frame, through the child
            obs, reward, terminated, truncated, info = env.step(1)
            assert not truncated
            collisions += env.experiment.driving_state.collisions
        assert collisions >= 1 and info["collisions"] == collisions
        assert clients_in_this_process() == []  # mid-episode, sensors streaming: none here
        child, servers = env.core.client_process.pid, fake()
        os.kill(child, signal.SIGKILL)
        obs, reward, terminated, truncated, info = env.step(1)
        assert truncated and not terminated and reward == 0.0
        assert "died during 'tick' (killed by SIGKILL)" in info["simulator_restart"]
        assert info["server_restarts"] == 1.0
        assert not alive(child) and not any(alive(p) for p in servers)  # the old server went with it
        relaunched = env.core.client_process.pid
        assert relaunched != child and alive(relaunched) and env.core.server.alive()
        obs, info = env.reset(seed=1)
        assert env.observation_space.contains(obs)
        for _ in range(3):
            obs, reward, terminated, truncated, info = env.step(1)
            assert not truncated and env.observation_space.contains(obs)
    finally:
        env.close()
    assert not alive(relaunched) and not any(alive(p) for p in fake())


def test_a_hung_client_process_is_killed_after_its_deadline(fake, tmp_path, monkeypatch):  # noqa: F811
    """A LibCarla call that ignores its time-out: the child is killed once the tick's time-out plus
    the grace have passed, and the episode ends truncated on a relaunched server and child."""
    monkeypatch.setenv("FAKE_CARLA_CLIENT_HANG_AT", "4")  # frames 1-2 are the resets', 3 the first step's
    env = carla_env(tmp_path, monkeypatch, BASE + 21, tick_timeout=0.5, client_process_grace=1.0)
    try:
        env.reset(seed=0)
        monkeypatch.delenv("FAKE_CARLA_CLIENT_HANG_AT")  # the relaunched child won't hang
        hung = env.core.client_process.pid
        assert not env.step(1)[3]
        t0 = time.monotonic()
        *_, truncated, info = env.step(1)
        took = time.monotonic() - t0
        assert truncated and "gave no answer to 'tick' within 2.0 s; killed" in info["simulator_restart"]
        assert 2.0 <= took < 30.0, took
        assert not alive(hung) and alive(env.core.client_process.pid)
        env.reset(seed=1)
        assert not env.step(1)[3]
    finally:
        env.close()


def test_what_the_proxies_do_not_serve_fails_naming_the_attribute_and_the_opt_out(fake, tmp_path):  # noqa: F811
    core = fake_server_core(tmp_path, 24)
    try:
        core.reset(seed=0)
        hero = core.hero
        assert hero.get_speed_limit() == 30.0 and hero.get_world() is core.world
        assert [a.id for a in core.world.get_actors().filter("vehicle.*")] == [hero.id]
        with pytest.raises(
            AttributeError,
            match=r"carla\.Vehicle \(core\.hero\)\.get_physics_control is not served here.*"
            r"simulator\.carla\.isolate_client: false",
        ):
            hero.get_physics_control()
        with pytest.raises(
            AttributeError, match=r"carla\.World \(core\.world\)\.get_spectator is not served"
        ):
            core.world.get_spectator()
        with pytest.raises(AttributeError, match=r"spawn_actor \(only sensors attached to core\.hero\)"):
            core.world.spawn_actor(core.world.get_blueprint_library().find("sensor.other.collision"), None)
    finally:
        core.close()


def test_the_world_and_hero_calls_of_a_typical_experiment_are_served(fake, tmp_path):  # noqa: F811
    """What the original rllib-integration's and CARLA's example agents read: the world snapshot (frame,
    timestamp, an actor's pose), the settings, one actor by id, the hero's attributes; all real
    carla types across the pipe."""
    core = fake_server_core(tmp_path, 26)
    try:
        core.reset(seed=0)
        frame = core.tick(None)
        world, hero = core.world, core.hero
        snapshot = world.get_snapshot()
        assert snapshot.frame == frame and snapshot.timestamp.frame == frame
        assert isinstance(snapshot.timestamp, carla.Timestamp) and snapshot.delta_seconds == 0.05
        assert snapshot.has_actor(hero.id) and len(snapshot) == 1 and snapshot.find(12345) is None
        assert snapshot.find(hero.id).get_transform().location == hero.get_location()
        assert snapshot.find(hero.id).get_angular_velocity().z == 2.0
        settings = world.get_settings()
        assert isinstance(settings, carla.WorldSettings) and settings.synchronous_mode
        assert settings.fixed_delta_seconds == 0.05
        actor = world.get_actor(hero.id)
        assert actor.type_id == hero.type_id and actor.attributes["role_name"] == "hero"
        assert actor.get_acceleration().x == 0.5 and world.get_actor(12345) is None
        assert hero.attributes["role_name"] == "hero"
        event_actor = ActorSnapshot(7, "static.wall")  # a collision's other actor: id and type only
        with pytest.raises(AttributeError, match=r"static\.wall, an event's other actor\)\.get_location"):
            event_actor.get_location()
    finally:
        core.close()


def test_the_client_process_start_is_bounded_by_the_servers_ready_timeout(tmp_path):
    """The child starts while the server boots: its import on a loaded node may take long, up to the
    server's own start budget (ready_timeout), not a fixed minute; past it, one line naming the key."""
    config = SimulatorConfig(
        backend="carla",
        town="GridTown03",
        carla={"launch": False, "port": BASE + 28, "ready_timeout": 0.05},
    )
    with pytest.raises(
        ServerError, match=r"did not start within 0\.05 s \(simulator\.carla\.ready_timeout\)"
    ):
        IsolatedCarlaCore(config, client_factory=make_client, log_dir=tmp_path)


def test_an_attached_servers_actors_of_a_killed_client_process_are_destroyed(tmp_path, monkeypatch):
    """launch: false: the server lives on when its client process is killed, and with it that child's
    hero, sensors and traffic (driving on with the dead TM's last control). The next child destroys them."""
    import socket

    from carla_env.simulator import SimulatorRestarted

    destroyed = tmp_path / "destroyed"
    monkeypatch.setenv("FAKE_CARLA_CLIENT_DESTROYED", str(destroyed))
    port = BASE + 29
    server = socket.create_server(("127.0.0.1", port))  # where the fake client's ticks connect
    config = SimulatorConfig(
        backend="carla",
        town="GridTown03",
        traffic={"vehicles": 3},
        carla={"launch": False, "port": port, "tm_port": port + 10},
    )
    core = IsolatedCarlaCore(config, client_factory=make_client, log_dir=tmp_path)
    try:
        core.reset(seed=0)
        camera = core.world.get_blueprint_library().find("sensor.camera.rgb")
        sensor = core.world.spawn_actor(camera, carla.Transform(), attach_to=core.hero)
        first = core.client_process.pid
        os.kill(first, signal.SIGKILL)
        with pytest.raises(SimulatorRestarted):
            core.tick(None)
        second = core.client_process.pid
        batches = [line.split() for line in destroyed.read_text().splitlines()]
        by_second = {int(i) for pid, *ids in batches if int(pid) == second for i in ids}
        assert {sensor.id, 1, 100, 101, 102} <= by_second  # the sensor, the fake's hero and its 3 vehicles
        assert not any(int(pid) == first for pid, *_ in batches)
        core.reset(seed=1)
        assert core.tick(None) > 0
    finally:
        core.close()
        server.close()


def test_an_event_without_another_actor_still_reaches_the_parent():
    """measurement_record runs on LibCarla's callback thread: an exception there loses the event."""
    from types import SimpleNamespace

    from carla_env.carla_server.client_process import measurement_record

    event = SimpleNamespace(frame=3, other_actor=None, normal_impulse=carla.Vector3D(1.0, 0.0, 0.0))
    record = measurement_record(event)
    assert record.frame == 3 and record.other_actor is None and record.normal_impulse.x == 1.0


def test_a_camera_that_stops_streaming_relaunches_within_one_tick_timeout(fake, tmp_path, monkeypatch):  # noqa: F811
    """The child waits for every stream sensor's frame within one tick_timeout; a frame that never
    comes ends the episode there (as the in-process StreamSensor does), not after further waits."""
    from carla_env.simulator import SimulatorRestarted

    monkeypatch.setenv("FAKE_CARLA_CLIENT_CAMERA_STOPS_AT", "3")
    core = fake_server_core(tmp_path, 3, tick_timeout=1.0)
    try:
        core.reset(seed=0)
        frames = []
        for kind in ("sensor.camera.rgb", "sensor.camera.rgb"):
            bp = core.world.get_blueprint_library().find(kind)
            core.world.spawn_actor(bp, carla.Transform(), attach_to=core.hero).listen(frames.append)
        assert core.tick(None) == 2 and [r.frame for r in frames] == [2, 2]
        t0 = time.monotonic()
        with pytest.raises(
            SimulatorRestarted, match=r"sensor sensor\.camera\.rgb: no data for frame 3 within 1 s"
        ):
            core.tick(None)
        assert core.health["restarts"] == 1 and time.monotonic() - t0 < 20.0
    finally:
        core.close()


class TwoArgumentError(Exception):
    def __init__(self, what, why):
        super().__init__(f"{what}: {why}")


def test_an_exception_the_parent_could_not_unpickle_arrives_as_a_runtime_error():
    """Exceptions pickle by their args: one whose __init__ takes others pickles, then fails to load in
    the parent (a TypeError instead of the child's error)."""
    import multiprocessing

    from carla_env.carla_server.client_process import _reply

    parent_end, child_end = multiprocessing.Pipe()
    _reply(child_end, "error", TwoArgumentError("spawn", "no room"))
    _reply(child_end, "ok", carla.Transform(carla.Location(1.0, 2.0, 3.0)))
    status, error = parent_end.recv()
    assert status == "error" and isinstance(error, RuntimeError)
    assert str(error).startswith("TwoArgumentError: spawn: no room")
    assert parent_end.recv()[1].location.y == 2.0


def test_carla_smoke_goes_on_after_its_client_process_is_killed(fake, tmp_path):  # noqa: F811
    """`make carla-smoke`'s drive on the fake server: the first env's client process gets SIGKILL at
    frame 6; that env restarts there and drives on, the second env is untouched."""
    import functools

    from carla_env.carla_server.smoke import parse_args, run

    args = parse_args(
        ["--carla-root", str(FAKE_ROOT), "--town", "GridTown03", "--vehicles", "2", "--frames", "12"]
        + ["--kill-at", "-1", "--kill-client-at", "6"]
    )
    factory = functools.partial(IsolatedCarlaCore, client_factory=make_client, log_dir=tmp_path)
    out, failures = run(args, core_factory=factory)
    assert failures == []
    first, second = out["envs"]
    assert out["killed_client_pid"] == out["client_pids"][0] and not alive(out["killed_client_pid"])
    assert first["restarted_at_frame"] == [6] and first["restarts"] == 1 and first["frames_driven"] == 11
    assert second["restarted_at_frame"] == [] and second["frames_driven"] == 12
    assert first["collisions"] > 0  # events reach the parent through the child
    assert not any(alive(p) for p in out["client_pids"]) and not any(alive(p) for p in fake())


def test_a_camera_in_the_child_reaches_the_parent_matched_by_frame(fake, tmp_path):  # noqa: F811
    """The image comes on LibCarla's thread after the tick returns; the child waits for it, the
    parent's StreamSensor gets it by frame, with the attributes it was configured with."""
    from carla_env.config import SensorConfig
    from carla_env.sensors.factory import make_sensor

    core = fake_server_core(tmp_path, 24, rendering=True)
    try:
        core.reset(seed=0)
        camera = make_sensor(
            "front", SensorConfig(type="sensor.camera.rgb", image_size_x=4, image_size_y=2, x=1.5), core, 0.05
        )
        for _ in range(3):
            frame = core.tick(carla.VehicleControl(throttle=0.3))
            got, image = camera.read(frame)
            assert got == image.frame == frame and (image.width, image.height) == (4, 2)
            assert image.raw_data == bytes([frame % 256]) * 32
        with pytest.raises(
            AttributeError, match=r"sensor measurement record\.save_to_disk is not served here"
        ):
            image.save_to_disk("front.png")  # the record carries the fields, not carla.Image's methods
        camera.destroy()
        assert not camera.actor.is_alive
    finally:
        core.close()


def test_a_server_time_out_in_the_child_relaunches_server_and_child(fake, tmp_path, monkeypatch):  # noqa: F811
    """LibCarla's own time-out, in the child: in reset the reset is retried once on a relaunched server
    and child; mid-episode the tick raises SimulatorRestarted."""
    from carla_env.simulator import SimulatorRestarted

    monkeypatch.setenv("FAKE_CARLA_CLIENT_TIME_OUT_AT", "1,4")  # the reset's tick, then the third step's
    monkeypatch.setenv("FAKE_CARLA_CLIENT_ONCE", str(tmp_path / "timed-out"))
    core = fake_server_core(tmp_path, 24)
    try:
        first_child, first_server = core.client_process.pid, core.server.pid
        core.reset(seed=0)
        assert core.health["restarts"] == 1 and not alive(first_child) and not alive(first_server)
        second_child = core.client_process.pid
        assert core.tick(None) == 2 and core.tick(None) == 3
        with pytest.raises(SimulatorRestarted, match=r"tick exceeded 10 s \(time-out of 10000ms"):
            core.tick(None)
        assert core.health["restarts"] == 2 and not alive(second_child) and alive(core.client_process.pid)
        core.reset(seed=1)
        assert core.tick(None) == 2
    finally:
        core.close()


def test_an_experiment_written_for_the_original_runs_on_the_isolated_core(fake, tmp_path, monkeypatch):  # noqa: F811
    """tests/original_style (hero velocity, location and forward vector, core.map waypoints, the
    original's collision events) through the proxies, unchanged."""
    from carla_env.compat import load_any_config
    from tests.test_compat import EXPERIMENT, original_config, write

    data = original_config()
    data["env_config"]["experiment"]["type"] = EXPERIMENT
    config, _, _ = load_any_config(write(tmp_path, data))
    server = {"carla_root": str(FAKE_ROOT), "port": BASE + 12, "tm_port": BASE + 32}
    simulator = config.simulator.model_copy(
        update={"backend": "carla", "carla": config.simulator.carla.model_copy(update=server)}
    )
    config = config.model_copy(update={"simulator": simulator})
    monkeypatch.setattr(
        env_module,
        "make_core",
        lambda config, blueprint, **kw: IsolatedCarlaCore(
            config, blueprint, client_factory=make_client, log_dir=tmp_path, **kw
        ),
    )
    env = CarlaEnv(config)
    try:
        obs, _ = env.reset(seed=3)
        assert env.observation_space.contains(obs) and isinstance(env.core, IsolatedCarlaCore)
        for _ in range(4):
            obs, reward, terminated, truncated, info = env.step(1)
            assert env.observation_space.contains(obs) and isinstance(reward, float) and not truncated
        assert info["collisions"] >= 1  # the fake client's frame-3 collision reached this process
    finally:
        env.close()


@pytest.mark.parametrize("child_at", ["idle", "hung_in_a_tick"])
def test_killing_the_parent_leaves_no_client_process_and_no_server(fake, tmp_path, child_at):  # noqa: F811
    """An env runner killed with -9: its client process exits (idle: the pipe's EOF; inside a LibCarla
    call that hangs: it sees itself re-parented), the reaper kills the server; nothing is left to pile
    up over runner restarts."""
    import subprocess
    import sys

    hang = child_at == "hung_in_a_tick"

    script = (
        "import sys, time; from pathlib import Path; sys.path.insert(0, sys.argv[1]);"
        "from carla_env.config import SimulatorConfig;"
        "from carla_env.carla_server.isolated import IsolatedCarlaCore;"
        "from tests.fake_carla_client import make_client;"
        "c = SimulatorConfig(backend='carla', town='GridTown03',"
        " carla={'carla_root': sys.argv[2], 'port': int(sys.argv[3]), 'tm_port': int(sys.argv[3]) + 20});"
        "core = IsolatedCarlaCore(c, client_factory=make_client, log_dir=Path(sys.argv[4])); core.reset(seed=0);"
        "print(core.client_process.pid, flush=True); core.tick(None) if sys.argv[5] else None; time.sleep(60)"
    )
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            script,
            str(ROOT),
            str(FAKE_ROOT),
            str(BASE + 15),
            str(tmp_path),
            child_at * hang,
        ],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "FAKE_CARLA_CLIENT_HANG_AT": "2" if hang else "0"},  # reset ticks frame 1
    )
    child = int(parent.stdout.readline())
    time.sleep(1.0)  # the tick's request reaches the child
    servers = fake()
    assert alive(child) and servers and all(alive(p) for p in servers)
    parent.kill()
    parent.wait()
    assert wait_until(lambda: not alive(child), 10), "the client process outlived its parent"
    assert wait_until(lambda: not any(alive(p) for p in servers), 15), "the server outlived its parent"
