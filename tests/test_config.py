import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from carla_env.backends import choose_backend, pin_backend
from carla_env.config import ConfigError, SimulatorConfig, load_config


def write(tmp_path, text):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_yaml_merges_over_defaults(tmp_path):
    cfg = load_config(write(tmp_path, "simulator:\n  traffic:\n    vehicles: 7\n"))
    assert cfg.simulator.traffic.vehicles == 7
    assert cfg.simulator.town == "GridTown01" and cfg.simulator.timestep == 0.05
    cfg = load_config(write(tmp_path, "simulator:\n  town: GridTown02\n"), {"simulator": {"seed": 9}})
    assert (cfg.simulator.town, cfg.simulator.seed) == ("GridTown02", 9)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "simulator:\n  trafic:\n    vehicles: 3\n",
            "simulator.trafic: unknown key; did you mean 'traffic'?",
        ),
        (
            "simulator:\n  traffic:\n    vehicles: many\n",
            "simulator.traffic.vehicles: Input should be a valid integer",
        ),
        (
            "simulator:\n  traffic:\n    vehicles: -3\n",
            "simulator.traffic.vehicles: Input should be greater than or equal to 0 (got -3)",
        ),
        ("simulator:\n  town: Twon01\n", "simulator.town: unknown town 'Twon01'"),
        (
            "simulator:\n  backend: unreal\n",
            "simulator.backend: Input should be 'auto', 'embedded' or 'carla'",
        ),
        (
            "experiment:\n  sensors:\n    bev: {type: sensor.birdview, channels: [road, sped]}\n",
            "experiment.sensors.bev.channels.1: Input should be 'road', 'route',",
        ),
        (
            "experiment:\n  sensors:\n    bev: {type: sensor.birdview, chanels: [road]}\n",
            "experiment.sensors.bev.chanels: unknown key; did you mean 'channels'?",
        ),
        (
            "experiment:\n  sensors:\n    bev: {type: sensor.birdview, history: [-1, 0.5]}\n",
            "experiment.sensors.bev.history: history frames are seconds in the past",
        ),
        (
            "training:\n  envs_per_runner: 0\n",
            "training.envs_per_runner: Input should be greater than or equal to 1 (got 0)",
        ),
        ("simulator: [1, 2\n", "not valid YAML"),
        ("- just\n- a list\n", "the top level must be a mapping"),
    ],
)
def test_bad_config_is_one_clear_line(tmp_path, text, expected):
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text))
    message = str(err.value)
    assert expected in message
    assert "\n" not in message
    assert str(tmp_path / "config.yaml") in message or "YAML" in message


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_cli_exits_2_with_the_one_line_error(tmp_path):
    path = write(tmp_path, "simulator:\n  timestep: -1\n")
    proc = subprocess.run(
        [sys.executable, "-m", "carla_env.demo", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"config error in {path}: simulator.timestep: Input should be greater than 0 (got -1)"
    ]


def test_demo_runs_the_embedded_simulator_end_to_end():
    proc = subprocess.run(
        [sys.executable, "-m", "carla_env.demo", "--seconds", "20", "--vehicles", "10"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "backend: embedded" in proc.stdout and "400 ticks" in proc.stdout


def test_auto_backend_says_what_it_picked(monkeypatch, tmp_path):
    monkeypatch.delenv("CARLA_ROOT", raising=False)
    monkeypatch.setattr("carla_env.backends._carla_server_reachable", lambda *a, **k: False)
    assert choose_backend(SimulatorConfig()).name == "embedded"
    monkeypatch.setenv("CARLA_ROOT", str(tmp_path))
    choice = choose_backend(SimulatorConfig())
    assert choice.name == "carla" and str(tmp_path) in choice.reason
    assert str(choose_backend(SimulatorConfig(backend="embedded"))) == "backend: embedded (set in the config)"


def test_loading_a_config_opens_no_socket(monkeypatch, tmp_path):
    """Validation is a pure schema check: only pinning the backend probes for a server."""
    import socket

    def no_socket(*a, **k):
        raise AssertionError("config validation opened a socket")

    monkeypatch.setattr(socket, "create_connection", no_socket)
    monkeypatch.delenv("CARLA_ROOT", raising=False)
    assert load_config("experiments/dqn/config.yaml").simulator.backend == "auto"


def test_carla_backend_needs_a_root_to_launch_a_server(monkeypatch, tmp_path):
    """No traceback mid-run: 'carla' with nothing to launch is a one-line error when the run's backend is pinned."""
    monkeypatch.delenv("CARLA_ROOT", raising=False)
    with pytest.raises(
        ConfigError, match=r"simulator.carla.carla_root: launching a CARLA server needs CARLA_ROOT"
    ):
        pin_backend(load_config(write(tmp_path, "simulator:\n  backend: carla\n")))
    attach, _ = pin_backend(
        load_config(write(tmp_path, "simulator:\n  backend: carla\n  carla: {launch: false, port: 2010}\n"))
    )
    assert (attach.simulator.backend, attach.simulator.carla.port) == ("carla", 2010)
    monkeypatch.setenv("CARLA_ROOT", str(tmp_path))
    pinned, choice = pin_backend(load_config(write(tmp_path, "simulator:\n  backend: auto\n")))
    assert pinned.simulator.backend == "carla" and choice.name == "carla"


def test_a_sensor_the_backend_lacks_is_one_line_naming_it():
    config = load_config(
        "experiments/dqn/config.yaml",
        {
            "simulator": {"backend": "embedded"},
            "experiment": {"sensors": {"front": {"type": "sensor.camera.rgb"}}},
        },
    )
    with pytest.raises(ConfigError) as err:
        pin_backend(config, "dqn.yaml")
    assert str(err.value).startswith(
        "config error in dqn.yaml: experiment.sensors.front.type: 'sensor.camera.rgb' is not available on the "
        "embedded backend"
    )


BAD_MAPS = {
    "garbage": (b"garbage \x00\x01 not xml at all", "is not XML"),
    "not_opendrive": (b'<?xml version="1.0"?>\n<svg><g/></svg>\n', "is XML but not OpenDRIVE (root <svg>"),
    "empty": (b"", "is empty"),
    "binary": (b"\xff\xfe\x00\x81", "is not text"),
    "no_roads": (b'<?xml version="1.0"?>\n<OpenDRIVE><header/></OpenDRIVE>\n', "has no driving lanes"),
}


@pytest.mark.parametrize("kind", sorted(BAD_MAPS))
def test_a_broken_xodr_fails_at_config_load_naming_the_file(tmp_path, kind):
    """Parsed at load, not inside a Ray worker: one line naming the file and the fix."""
    content, expected = BAD_MAPS[kind]
    xodr = tmp_path / f"{kind}.xodr"
    xodr.write_bytes(content)
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, f"simulator:\n  town: {xodr}\n"))
    message = str(err.value)
    assert "\n" not in message
    assert f"simulator.town: OpenDRIVE file {xodr} {expected}" in message
    assert "give a .xodr file" in message
    # In a list of towns too.
    with pytest.raises(ConfigError, match="simulator.town: OpenDRIVE file"):
        load_config(write(tmp_path, f"simulator:\n  town: [GridTown01, {xodr}]\n"))


def test_a_valid_xodr_file_loads(tmp_path):
    from carla_env.maps import BUILTIN_TOWNS, generate_town

    xodr = tmp_path / "mine.xodr"
    xodr.write_text(generate_town(BUILTIN_TOWNS["GridTown03"]))
    assert load_config(write(tmp_path, f"simulator:\n  town: {xodr}\n")).simulator.town == str(xodr)


def test_an_empty_config_file_is_one_line(tmp_path):
    path = write(tmp_path, "")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value) == (
        f"config file {path} is empty; start from an experiment's config, e.g. experiments/dqn/config.yaml"
    )


def test_demo_with_a_garbage_town_is_one_line_blaming_the_flag(tmp_path):
    xodr = tmp_path / "garbage.xodr"
    xodr.write_text("this is not a map")
    proc = subprocess.run(
        [sys.executable, "-m", "carla_env.demo", "--town", str(xodr), "--seconds", "1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith(f"--town: OpenDRIVE file {xodr} is not XML")
    assert proc.stdout == ""


def test_a_misspelt_experiment_option_is_named_against_the_config_not_its_profile():
    """A config with profiles: a typo in its own experiment.options (or a train.py --set) is the config's,
    not 'with profiles.gpu' (each profile's merge is validated too, and used to report it first)."""
    with pytest.raises(ConfigError) as e:
        load_config("experiments/ppo/config.yaml", {"experiment": {"options": {"yield_penalti": 0.1}}})
    assert str(e.value) == (
        "config error in experiments/ppo/config.yaml: experiment.options.yield_penalti: unknown key; "
        "did you mean 'yield_penalty'?"
    )


def test_a_mistake_in_a_hardware_profile_fails_at_load_on_any_machine(tmp_path):
    """profiles.gpu is merged only with a GPU; its typo is still reported on every machine."""
    base = yaml.safe_load(Path("experiments/dqn/config.yaml").read_text())
    base["profiles"]["gpu"]["training"]["modle"] = {}
    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump(base))
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert (
        str(e.value)
        == f"config error in {path} with profiles.gpu: training.modle: unknown key; did you mean 'model'?"
    )
    base["profiles"]["gpu"] = {"simulator": {"backend": "carla"}}
    path.write_text(yaml.safe_dump(base))
    with pytest.raises(
        ConfigError, match="profiles.gpu.simulator.backend: a profile cannot choose the backend"
    ):
        load_config(path)
