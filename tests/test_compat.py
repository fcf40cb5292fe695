"""carla_env.compat: experiments and configs written for the original rllib-integration, run unchanged.

tests/original_style/ holds an experiment and a config written in the original's style for these
tests: gym spaces, `rllib_integration` imports, the original hook signatures and YAML layout.
"""

import json
import subprocess
import sys
import types
from pathlib import Path

import carla
import gymnasium
import numpy as np
import pytest
import yaml

from carla_env.compat import (
    ADAPTER,
    install_original_imports,
    is_original_layout,
    load_any_config,
    map_original_config,
    original_sensor_data,
    policy_space,
    to_gymnasium,
)
from carla_env.config import ConfigError
from carla_env.sensors.birdview import colorize, pack

ROOT = Path(__file__).resolve().parents[1]
ORIGINAL = ROOT / "tests/original_style"
EXPERIMENT = "tests.original_style.experiment:LaneFollowExperiment"

install_original_imports()  # this module subclasses the original-style experiment below
from tests.original_style.experiment import LaneFollowExperiment  # noqa: E402


def original_config() -> dict:
    return yaml.safe_load((ORIGINAL / "config.yaml").read_text())


def write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def run(*args, timeout=600):
    return subprocess.run(
        [sys.executable, *map(str, args)], capture_output=True, text=True, timeout=timeout, cwd=ROOT
    )


# --------------------------------------------------------------------------- end to end


@pytest.mark.timeout(900)
def test_original_experiment_trains_one_iteration_and_infer_drives_it(tmp_path):
    runs = tmp_path / "runs"
    proc = run("train.py", ORIGINAL / "config.yaml", "--name", "original", "--dir", runs, "--stop-iters", 1)
    assert proc.returncode == 0, proc.stderr[-3000:]
    notes = [
        line for line in proc.stdout.splitlines() if line.startswith("original rllib-integration config")
    ]
    assert notes == [proc.stdout.splitlines()[0]]  # one line, first
    assert f"running {EXPERIMENT} through carla_env.compat" in notes[0]
    assert "env_config.carla.show_display" in notes[0]  # what the original had that is not used here
    (checkpoint,) = (runs / "original").glob("*/checkpoint_000000")
    saved = yaml.safe_load((runs / "original/carla_env_config.yaml").read_text())
    assert saved["experiment"]["type"] == ADAPTER
    assert saved["experiment"]["options"]["type"] == EXPERIMENT  # found beside the config

    summary, video = tmp_path / "infer.json", tmp_path / "bev.mp4"
    proc = run("infer.py", runs / "original", "--episodes", "1", "--json", summary, "--video", video)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (episode,) = json.loads(summary.read_text())["episodes"]
    assert 0 < episode["steps"] <= 40  # env_config.experiment.max_steps
    assert video.stat().st_size > 0


# --------------------------------------------------------------------------- config mapping


def test_every_key_of_the_original_layout_lands_in_its_place():
    data = original_config()
    data.update(
        num_workers=2,
        num_cpus_per_worker=11,
        gamma=0.95,
        exploration_config={"type": "SoftQ", "temperature": 1.0},  # no new-stack counterpart
    )
    data["env_config"]["carla"].update(retries_on_error=5, timeout=20.0, enable_map_assets=True)
    data["env_config"]["experiment"]["background_activity"].update(n_walkers=4, seed=7)
    data["env_config"]["experiment"]["weather"] = "WetNoon"
    assert is_original_layout(data) and not is_original_layout({"simulator": {}, "env_config": {}})

    mapped = map_original_config(data, str(ORIGINAL / "config.yaml"), cwd=ROOT)
    sim, exp, tr = (mapped.data[k] for k in ("simulator", "experiment", "training"))
    assert sim["backend"] == "embedded" and sim["timestep"] == 0.1 and sim["town"] == "GridTown01"
    assert sim["traffic"] == {"vehicles": 3} and sim["seed"] == 7
    assert sim["carla"] == {
        "client_timeout": 20.0,
        "quality": "Low",
        "map_layers": ["All"],
        "ready_timeout": 5 * (20.0 + 3.0),  # the original's retries, `timeout` + 3 s apart
        "weather": "WetNoon",
        "walkers": 4,
    }
    assert tr["num_env_runners"] == 2
    assert tr["settings"] == {
        "train_batch_size_per_learner": 8,
        "num_steps_sampled_before_learning_starts": 50,
        "replay_buffer_config": {"capacity": 1000},
        "lr": 0.001,
        "gamma": 0.95,
    }
    assert tr["reporting"] == {"min_sample_timesteps_per_iteration": 100}
    assert tr["model"] == {"head_fcnet_hiddens": [32], "conv_filters": [[8, [4, 4], 4], [16, [3, 3], 2]]}
    assert set(mapped.not_used) == {
        "num_gpus_per_worker",
        "num_cpus_per_worker",
        "rollout_fragment_length",
        "exploration_config",
        "model.dim",
        "env_config.carla.show_display",
        "env_config.experiment.background_activity.tm_hybrid_mode",
    }
    assert exp["type"] == ADAPTER and exp["max_steps"] == 40
    assert exp["options"] == {
        "type": EXPERIMENT,
        "config": data["env_config"]["experiment"],
        "import_path": str(ROOT),
    }
    assert exp["hero"] == {"blueprint": "vehicle.lincoln.mkz_2020", "spawn_points": []}
    # The original's view: 2 x radius metres across (32 px over 32 m), the hero a quarter up from the bottom.
    bev = exp["sensors"]["birdview"]
    assert (bev["size"], bev["pixels_per_meter"], bev["ego_offset"]) == (32, 1.0, 8) and "ego" in bev[
        "channels"
    ]
    assert exp["sensors"]["collision"] == {"type": "sensor.other.collision"}


def test_epsilon_greedy_exploration_becomes_the_epsilon_schedule():
    data = original_config()  # its exploration_config is EpsilonGreedy 1.0 -> 0.1 over 500 steps
    assert map_original_config(data, str(ORIGINAL / "config.yaml"), cwd=ROOT).data["training"]["settings"][
        "epsilon"
    ] == [
        [0, 1.0],
        [500, 0.1],
    ]


def test_ppo_keys_take_their_new_stack_names(tmp_path):
    data = {
        k: v
        for k, v in original_config().items()
        if k not in ("hiddens", "exploration_config", "learning_starts", "buffer_size")
    }
    data.update(
        {"algorithm": "PPO", "lambda": 0.95, "num_sgd_iter": 4, "sgd_minibatch_size": 16, "clip_param": 0.2}
    )
    data["env_config"]["experiment"]["type"] = EXPERIMENT
    config, _, _ = load_any_config(write(tmp_path, data))
    assert config.training.algorithm == "PPO"
    assert config.training.settings == {
        "train_batch_size_per_learner": 8,
        "lr": 0.001,
        "lambda_": 0.95,
        "num_epochs": 4,
        "minibatch_size": 16,
        "clip_param": 0.2,
    }


def test_sensor_transform_becomes_the_mounting_keys():
    data = original_config()
    data["env_config"]["experiment"]["hero"]["sensors"]["camera"] = {
        "type": "sensor.camera.rgb",
        "image_size_x": 84,
        "transform": "1.5,0,2.4,0,-10,0",
    }
    camera = map_original_config(data, str(ORIGINAL / "config.yaml"), cwd=ROOT).data["experiment"]["sensors"][
        "camera"
    ]
    assert camera == {
        "type": "sensor.camera.rgb",
        "image_size_x": 84,
        **dict(x=1.5, y=0.0, z=2.4, roll=0.0, pitch=-10.0, yaw=0.0),
    }


def test_three_value_spawn_points_head_along_the_lane():
    from carla_env.maps.town import load_town

    waypoint = [
        w for w in load_town("GridTown01").map.generate_waypoints(10.0) if abs(w.transform.rotation.yaw) > 45
    ][0]
    at = waypoint.transform.location
    data = original_config()
    data["env_config"]["experiment"]["hero"]["spawn_points"] = [f"{at.x},{at.y},{at.z + 1}", "1,2,3,0,0,90"]
    points = map_original_config(data, str(ORIGINAL / "config.yaml"), cwd=ROOT).data["experiment"]["hero"][
        "spawn_points"
    ]
    x, y, z, roll, pitch, yaw = map(float, points[0].split(","))
    assert (x, y, z) == pytest.approx((at.x, at.y, at.z + 1))
    assert yaw == pytest.approx(waypoint.transform.rotation.yaw)  # the original took the lane's heading
    assert points[1] == "1,2,3,0,0,90"  # a full pose is kept as given


def _set(data: dict, dotted: str, value) -> dict:
    *parents, last = dotted.split(".")
    node = data
    for part in parents:
        node = node[part]
    node[last] = value
    return data


@pytest.mark.parametrize(
    "key, value, named",
    [
        ("optimizer", {"type": "adam"}, "optimizer: no counterpart"),
        ("framework", "tf2", "framework: 'tf2': this project trains with torch only"),
        ("model.custom_model", "my_net", "model.custom_model: no counterpart"),
        ("env_config.carla.rpc_port", 2000, "env_config.carla.rpc_port: unknown key"),
        ("env_config.experiment.town", "Town99", "env_config.experiment.town: unknown town 'Town99'"),
        (
            "env_config.experiment.hero.sensors.birdview.radius",
            0,
            "env_config.experiment.hero.sensors.birdview.radius",
        ),
        (
            "env_config.experiment.hero.sensors.cam",
            {"type": "sensor.camera.rgb"},
            "env_config.experiment.hero.sensors.cam.type: 'sensor.camera.rgb' is not available on the embedded",
        ),
        (
            "env_config.experiment.background_activity.n_vehicles",
            -1,
            "env_config.experiment.background_activity.n_vehicles: Input should be greater than or equal to 0",
        ),
        (
            "env_config.experiment.type",
            "tests.original_style.experiment:Nope",
            "env_config.experiment.type: cannot import",
        ),
    ],
)
def test_an_original_config_it_cannot_map_is_one_error_naming_the_key(tmp_path, key, value, named):
    data = original_config()
    data["env_config"]["experiment"]["type"] = EXPERIMENT  # the copy in tmp_path has no experiment beside it
    path = write(tmp_path, _set(data, key, value))
    with pytest.raises(ConfigError) as e:
        load_any_config(path)
    assert named in str(e.value) and "\n" not in str(e.value)
    assert str(e.value).startswith(f"config error in {path}: ")


def test_a_missing_experiment_class_is_one_error_and_train_exits_2(tmp_path):
    path = write(
        tmp_path, original_config()
    )  # it names no class, and no experiment module is beside this copy
    proc = run("train.py", path, "--dir", tmp_path / "runs", timeout=120)
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith(f"config error in {path}: env_config.experiment.type: missing")
    assert "'module:Class'" in line
    assert not (tmp_path / "runs").exists()  # nothing half-made


# --------------------------------------------------------------------------- hooks through CarlaEnv


def make_env(tmp_path, **experiment):
    from carla_env.env import CarlaEnv

    data = original_config()
    data["env_config"]["experiment"] = {**data["env_config"]["experiment"], "type": EXPERIMENT, **experiment}
    config, _, note = load_any_config(write(tmp_path, data))
    assert note is not None
    return CarlaEnv(config)


def test_done_is_terminated_and_the_time_limit_truncates(tmp_path):
    env = make_env(tmp_path, max_steps=6, others={"framestack": 2, "max_idle_steps": 1000})
    try:
        obs, _ = env.reset(seed=3)
        assert env.observation_space.contains(obs) and obs.dtype == np.float32  # the policy's float image
        image = env.experiment.original.frames[-1]  # what the experiment got: the original's RGB BEV
        assert image.shape == (32, 32, 3) and image.dtype == np.uint8
        assert tuple(image[32 - 8, 16]) == (230, 230, 60)  # the hero, a quarter up from the bottom
        ends = [env.step(4)[2:4] for _ in range(6)]  # braking: idle, but the experiment allows it
        assert ends == [(False, False)] * 5 + [(False, True)]  # the time limit: truncated

        env.experiment.original.max_idle_steps = 2
        env.reset(seed=3)
        ends = [env.step(4)[2:4] for _ in range(3)]
        assert ends == [(False, False), (False, False), (True, False)]  # the experiment's done: terminated
        assert env.experiment.idle_steps == 3  # the user's attributes read through the adapter
    finally:
        env.close()


class DoneNotImplemented(LaneFollowExperiment):
    def get_done_status(self, observation, core):
        return NotImplementedError  # what the original base class returned when not overridden


def test_a_done_that_is_not_one_bool_is_refused(tmp_path):
    env = make_env(tmp_path, type="tests.test_compat:DoneNotImplemented")
    try:
        env.reset(seed=0)
        with pytest.raises(
            TypeError, match=r"DoneNotImplemented.get_done_status must return one bool, got type"
        ):
            env.step(0)
    finally:
        env.close()


# --------------------------------------------------------------------------- spaces


class Box:  # gym is not installed here: stand-ins with gym 0.26's class names and attributes
    __module__ = "gym.spaces.box"

    def __init__(self, low, high, shape, dtype):
        self.dtype = np.dtype(dtype)
        self.low, self.high = np.full(shape, low, self.dtype), np.full(shape, high, self.dtype)
        self.shape = shape


class Discrete:
    def __init__(self, n, start=0):
        self.n, self.start = n, start


class MultiDiscrete:
    def __init__(self, nvec):
        self.nvec, self.dtype = np.asarray(nvec), np.dtype(np.int64)


class MultiBinary:
    def __init__(self, n):
        self.n = n


class Tuple:
    def __init__(self, spaces):
        self.spaces = tuple(spaces)


class Dict:
    def __init__(self, spaces):
        self.spaces = dict(spaces)


def test_gym_spaces_become_the_equal_gymnasium_spaces():
    s = gymnasium.spaces
    image = Box(0, 255, (8, 8, 3), np.uint8)
    converted = to_gymnasium(
        Dict(
            {
                "image": image,
                "speed": Box(-1.0, 1.0, (1,), np.float32),
                "pick": Tuple([Discrete(3, start=1), MultiBinary(4)]),
            }
        )
    )
    assert converted == s.Dict(
        {
            "image": s.Box(0, 255, (8, 8, 3), np.uint8),
            "speed": s.Box(-1.0, 1.0, (1,), np.float32),
            "pick": s.Tuple([s.Discrete(3, start=1), s.MultiBinary(4)]),
        }
    )
    assert to_gymnasium(MultiDiscrete([3, 4])) == s.MultiDiscrete([3, 4])
    native = s.Discrete(5)
    assert to_gymnasium(native) is native

    class Graph:
        pass

    with pytest.raises(TypeError, match=r"get_observation_space\(\): cannot convert .*Graph"):
        to_gymnasium(Graph(), "get_observation_space()")


def test_an_integer_image_is_trained_as_float32_and_other_spaces_as_they_are():
    image = gymnasium.spaces.Box(0, 255, (8, 8, 6), np.uint8)
    assert policy_space(image) == gymnasium.spaces.Box(0.0, 255.0, (8, 8, 6), np.float32)
    for space in (gymnasium.spaces.Discrete(3), gymnasium.spaces.Box(0, 255, (10,), np.uint8)):
        assert policy_space(space) is space


# --------------------------------------------------------------------------- sensor data and imports


def test_sensor_data_comes_in_the_original_form():
    config, _, _ = load_any_config(ORIGINAL / "config.yaml")
    sensors = dict(config.experiment.sensors)
    bev = sensors["birdview"]
    masks = (np.random.default_rng(0).random((bev.num_channels, 32, 32)) < 0.2).astype(np.uint8)
    impact = types.SimpleNamespace(other_actor="truck", normal_impulse=carla.Vector3D(3.0, 4.0, 0.0))
    bgra = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    camera = types.SimpleNamespace(raw_data=bgra.tobytes(), height=2, width=3)
    sensors["camera"] = types.SimpleNamespace(type="sensor.camera.rgb")
    sensors["gnss"] = types.SimpleNamespace(type="sensor.other.gnss")
    gnss = types.SimpleNamespace(latitude=1.0, longitude=2.0, altitude=3.0)

    quiet = original_sensor_data({"birdview": (7, masks), "collision": (7, [])}, sensors)
    assert set(quiet) == {"birdview"}  # an event sensor only appears in a frame with an event
    frame, rgb = quiet["birdview"]
    assert frame == 7 and rgb.shape == (32, 32, 3) and rgb.dtype == np.uint8
    assert np.array_equal(rgb, colorize(bev, masks))
    packed = original_sensor_data(
        {"birdview": (7, pack(masks))}, {"birdview": bev.model_copy(update={"packed": True})}
    )
    assert np.array_equal(packed["birdview"][1], rgb)

    data = original_sensor_data(
        {"collision": (8, [impact, impact]), "camera": (8, camera), "gnss": (8, gnss)}, sensors
    )
    assert data["collision"] == (8, ["truck", 5.0])  # the first event, with its impulse's norm
    assert np.array_equal(data["camera"][1], bgra[:, :, 2::-1])  # BGRA -> RGB
    assert data["gnss"][1].tolist() == [1.0, 2.0, 3.0]


def test_the_original_imports_resolve_without_the_original_or_gym():
    code = """
import carla_env.compat as compat
import importlib.util
gym_absent = importlib.util.find_spec("gym") is None
assert compat.install_original_imports() == ["rllib_integration"] + (["gym"] if gym_absent else [])
import gymnasium
from gym.spaces import Box
from rllib_integration.base_experiment import BaseExperiment
from rllib_integration.helper import join_dicts, post_process_image
import numpy as np
assert Box is gymnasium.spaces.Box or not gym_absent
exp = BaseExperiment({"hero": {"blueprint": "vehicle.tesla.model3"}, "others": {"framestack": 4}})
assert exp.config["hero"] == {"blueprint": "vehicle.tesla.model3", "sensors": {}, "spawn_points": []}
assert exp.config["town"] == "Town05_Opt" and exp.config["others"] == {"framestack": 4}
assert join_dicts({"a": {"b": 1, "c": 2}}, {"a": {"c": 3}}) == {"a": {"b": 1, "c": 3}}
rgb = np.full((4, 4, 3), 255, np.uint8)
grey = post_process_image(rgb)
assert grey.shape == (4, 4, 1) and grey.dtype == np.float32 and abs(float(grey.max()) - 127 / 128) < 1e-6
assert post_process_image(rgb, normalized=False, grayscale=False).dtype == np.uint8
print("ok")
"""
    proc = run("-c", code, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]
