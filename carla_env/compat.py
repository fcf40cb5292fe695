"""Run experiments written for the original carla-simulator/rllib-integration, unchanged.

The original's experiment API differs from ours in five places, each bridged here:

- its config layout (RLlib's trainer keys at the top, `env_config: {carla, experiment}`), mapped onto
  `carla_env.config.Config` by `map_original_config`, with errors naming the original key;
- its hooks (`__init__(config)`, `reset()`, `get_observation(sensor_data)`, one `done` bool), called by
  `OriginalExperiment`, a BaseExperiment that holds the user's object;
- its sensor data: the 300x300 RGB bird's-eye view and parsed camera, lidar and event data;
- gym spaces, converted to gymnasium ones (`to_gymnasium`), without importing gym;
- its imports: `rllib_integration.base_experiment`, `rllib_integration.helper` and, when gym is not
  installed, `gym` (answered by gymnasium, its maintained successor) resolve to modules set up here.

docs/porting.md lists the mapping key by key and hook by hook.
"""

from __future__ import annotations

import ast
import collections.abc
import copy
import importlib
import importlib.util
import math
import sys
import types
from pathlib import Path
from typing import Any

import carla
import gymnasium
import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, field_validator

from carla_env.config import Config, ConfigError, deep_merge, load_config, validate_config
from carla_env.experiment import BaseExperiment
from carla_env.sensors.birdview import BirdviewSpec, colorize, unpack

ADAPTER = "carla_env.compat:OriginalExperiment"

# --------------------------------------------------------------------------- the original's imports

# The original BaseExperiment's defaults, merged under every experiment's config (`self.config`).
ORIGINAL_EXPERIMENT_DEFAULTS: dict = {
    "hero": {"blueprint": "vehicle.lincoln.mkz_2017", "sensors": {}, "spawn_points": []},
    "background_activity": {"n_vehicles": 0, "n_walkers": 0, "tm_hybrid_mode": True, "seed": None},
    "town": "Town05_Opt",
    "weather": "ClearNoon",
}


def join_dicts(base: collections.abc.Mapping, update: collections.abc.Mapping) -> dict:
    """`base` updated by `update`, nested mappings merged key by key (the original's helper)."""
    out = dict(base)
    for key, value in update.items():
        out[key] = (
            join_dicts(base.get(key, {}), value) if isinstance(value, collections.abc.Mapping) else value
        )
    return out


def post_process_image(image, normalized: bool = True, grayscale: bool = True) -> np.ndarray:
    """The original helper: an RGB image (or the first of a list) to grey (H, W, 1) and/or to
    float32 in [-1, 1); else uint8."""
    import cv2

    if isinstance(image, list):
        image = image[0]
    if grayscale:
        image = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY)[:, :, np.newaxis]
    if normalized:
        return (image.astype(np.float32) - 128) / 128
    return image.astype(np.uint8)


class OriginalBaseExperiment:
    """The original's `rllib_integration.base_experiment.BaseExperiment`: subclass it as there."""

    def __init__(self, config: dict) -> None:
        self.config = join_dicts(ORIGINAL_EXPERIMENT_DEFAULTS, config)

    def reset(self) -> None:
        """Called at the start of every episode, after the hero and its sensors are spawned."""

    def get_action_space(self):
        raise NotImplementedError

    def get_observation_space(self):
        raise NotImplementedError

    def get_actions(self):
        raise NotImplementedError

    def compute_action(self, action) -> carla.VehicleControl:
        raise NotImplementedError

    def get_observation(self, sensor_data: dict):
        """(observation, info) from {sensor name: (frame, data)}."""
        raise NotImplementedError

    def get_done_status(self, observation, core) -> bool:
        raise NotImplementedError

    def compute_reward(self, observation, core) -> float:
        raise NotImplementedError


def install_original_imports() -> list[str]:
    """Make `rllib_integration.base_experiment`, `rllib_integration.helper` and (when gym is absent)
    `gym` importable; a real installation of either wins. Returns the names set up here."""
    installed = []
    if "rllib_integration" not in sys.modules and importlib.util.find_spec("rllib_integration") is None:
        package = types.ModuleType("rllib_integration", "carla_env.compat's stand-in for the original")
        package.__path__ = []  # a package, so its submodules import
        base = types.ModuleType("rllib_integration.base_experiment")
        base.BaseExperiment = OriginalBaseExperiment
        base.BASE_EXPERIMENT_CONFIG = ORIGINAL_EXPERIMENT_DEFAULTS
        helper = types.ModuleType("rllib_integration.helper")
        helper.join_dicts, helper.post_process_image = join_dicts, post_process_image
        package.base_experiment, package.helper = base, helper
        sys.modules.update({m.__name__: m for m in (package, base, helper)})
        installed.append("rllib_integration")
    if "gym" not in sys.modules and importlib.util.find_spec("gym") is None:
        sys.modules["gym"] = gymnasium
        sys.modules["gym.spaces"] = gymnasium.spaces
        installed.append("gym")
    return installed


def original_class(path: str, import_path: str | None = None) -> type:
    """Import an original-API experiment class named 'module:Class'."""
    install_original_imports()
    if import_path and import_path not in sys.path and Path(import_path).is_dir():
        sys.path.insert(0, import_path)
    module_name, _, class_name = path.partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError, ValueError) as e:
        raise ValueError(f"cannot import {path!r} ({e}); use 'package.module:ClassName'") from None
    missing = [hook for hook in HOOKS if not callable(getattr(cls, hook, None))]
    if not isinstance(cls, type) or missing:
        raise ValueError(f"{path!r} is not an experiment of the original API (no {', '.join(missing)})")
    return cls


HOOKS = (
    "reset",
    "get_action_space",
    "get_observation_space",
    "compute_action",
    "get_observation",
    "get_done_status",
    "compute_reward",
)


# --------------------------------------------------------------------------- spaces


def to_gymnasium(space, where: str = "space") -> gymnasium.Space:
    """A gymnasium space equal to a gym (or gymnasium) one. gym is not imported: its spaces are
    read by class name and attributes, as gym 0.21-0.26 define them."""
    if isinstance(space, gymnasium.Space):
        return space
    kind = type(space).__name__
    spaces = gymnasium.spaces
    if kind == "Box":
        return spaces.Box(np.asarray(space.low), np.asarray(space.high), dtype=space.dtype)
    if kind == "Discrete":
        return spaces.Discrete(int(space.n), start=int(getattr(space, "start", 0)))
    if kind == "MultiDiscrete":
        return spaces.MultiDiscrete(np.asarray(space.nvec), dtype=space.dtype)
    if kind == "MultiBinary":
        return spaces.MultiBinary(space.n)
    if kind == "Tuple":
        return spaces.Tuple([to_gymnasium(s, f"{where}[{i}]") for i, s in enumerate(space.spaces)])
    if kind == "Dict":
        return spaces.Dict({k: to_gymnasium(s, f"{where}[{k!r}]") for k, s in space.spaces.items()})
    raise TypeError(
        f"{where}: cannot convert {type(space).__module__}.{kind} to a gymnasium space; "
        "use Box, Discrete, MultiDiscrete, MultiBinary, Tuple or Dict"
    )


def policy_space(space: gymnasium.Space) -> gymnasium.Space:
    """The space the policy is trained on: an integer image (H, W, C) becomes float32, as RLlib's
    default CNN encoder takes no uint8 input (the original's RLlib cast in its preprocessor)."""
    if isinstance(space, gymnasium.spaces.Box) and len(space.shape) == 3 and space.dtype.kind in "ui":
        return gymnasium.spaces.Box(space.low.astype(np.float32), space.high.astype(np.float32))
    return space


# --------------------------------------------------------------------------- sensor data


def original_sensor_data(sensor_data: dict, sensors: dict) -> dict:
    """Our {name: (frame, data)} in the original's form: the BEV as an (H, W, 3) RGB image, cameras
    as RGB arrays, lidar/radar/GNSS/IMU as float arrays, and an event sensor's key only in a frame
    with an event, holding its first event as [other actor, impulse] (collision), [transform,
    markings] (lane invasion) or [other actor, distance] (obstacle)."""
    out = {}
    for name, (frame, data) in sensor_data.items():
        config = sensors[name]
        kind = config.type
        if isinstance(config, BirdviewSpec):
            masks = unpack(data, config.num_channels) if config.packed else data
            out[name] = (frame, colorize(config, masks))
        elif kind in _EVENTS:
            if data:
                out[name] = (frame, _EVENTS[kind](data[0]))
        else:
            parse = next((p for prefix, p in _STREAMS if kind.startswith(prefix)), None)
            out[name] = (frame, parse(data) if parse else data)
    return out


def _camera(image) -> np.ndarray:
    bgra = np.frombuffer(image.raw_data, np.uint8).reshape(image.height, image.width, 4)
    return bgra[:, :, 2::-1].copy()


def _floats(columns: int, flip: bool = False):
    def parse(measurement) -> np.ndarray:
        points = np.frombuffer(measurement.raw_data, np.float32).reshape(-1, columns).copy()
        return np.flip(points, 1) if flip else points

    return parse


_STREAMS = (
    ("sensor.camera.", _camera),
    ("sensor.lidar.ray_cast", _floats(4)),
    ("sensor.other.radar", _floats(4, flip=True)),  # [depth, azimuth, altitude, velocity]
    ("sensor.other.gnss", lambda g: np.array([g.latitude, g.longitude, g.altitude], np.float64)),
    (
        "sensor.other.imu",
        lambda m: np.array(
            [
                *(getattr(m.accelerometer, a) for a in "xyz"),
                *(getattr(m.gyroscope, a) for a in "xyz"),
                m.compass,
            ],
            np.float64,
        ),
    ),
)
_EVENTS = {
    "sensor.other.collision": lambda e: [
        e.other_actor,
        math.sqrt(e.normal_impulse.x**2 + e.normal_impulse.y**2 + e.normal_impulse.z**2),
    ],
    "sensor.other.lane_invasion": lambda e: [e.transform, e.crossed_lane_markings],
    "sensor.other.obstacle": lambda e: [e.other_actor, e.distance],
}


# --------------------------------------------------------------------------- the adapter


class OriginalOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    import_path: str | None = None  # a folder put on sys.path to import it (the user's project)
    type: str  # the original-API experiment class, 'module:Class'
    config: dict[str, Any] = {}  # the original's env_config.experiment: what the class's __init__ gets

    @field_validator("type")
    @classmethod
    def _importable(cls, path: str, info) -> str:
        original_class(path, info.data.get("import_path"))
        return path


class OriginalExperiment(BaseExperiment):
    """A BaseExperiment that runs an experiment written for the original API: the original's hook
    signatures, its sensor data, gym spaces, one `done` (terminated; the env's max_steps truncates)."""

    Options = OriginalOptions

    def __init__(self, config, options: OriginalOptions) -> None:
        super().__init__(config, options)
        cls = original_class(options.type, options.import_path)
        self.original = cls(copy.deepcopy(options.config))
        self._original_obs = None
        self._observation_space = to_gymnasium(
            self.original.get_observation_space(), f"{options.type}.get_observation_space()"
        )
        self._policy_space = policy_space(self._observation_space)

    def get_action_space(self) -> gymnasium.Space:
        return to_gymnasium(self.original.get_action_space(), f"{self.options.type}.get_action_space()")

    def get_observation_space(self) -> gymnasium.Space:
        return self._policy_space

    def reset(self, core, rng: np.random.Generator) -> None:
        super().reset(core, rng)  # our route: metrics and the BEV's route channel
        self.original.reset()

    def compute_action(self, action) -> carla.VehicleControl:
        return self.original.compute_action(action)

    def get_observation(self, sensor_data: dict, core) -> tuple[object, dict]:
        obs, info = self.original.get_observation(original_sensor_data(sensor_data, self.config.sensors))
        self._original_obs = obs
        if self._policy_space is not self._observation_space:
            obs = np.asarray(obs, np.float32)
        return obs, dict(info or {})

    def get_done_status(self, observation, core) -> tuple[bool, bool]:
        """The original's one `done` ends the episode for the experiment's own reasons: terminated.
        Truncation is the env's time limit (experiment.max_steps) alone."""
        done = self.original.get_done_status(self._original_obs, core)
        if not isinstance(done, (bool, np.bool_)):
            raise TypeError(
                f"{self.options.type}.get_done_status must return one bool, got {type(done).__name__}"
            )
        return bool(done), False

    def compute_reward(self, observation, core) -> float:
        return float(self.original.compute_reward(self._original_obs, core))

    def __getattr__(self, name: str):
        # The user's own attributes (e.g. a callback reading `env.experiment.last_heading_deviation`).
        if name == "original":
            raise AttributeError(name)
        return getattr(self.original, name)


# --------------------------------------------------------------------------- config layout


def is_original_layout(data) -> bool:
    """The original's config: RLlib trainer keys at the top level and `env_config.experiment`."""
    return (
        isinstance(data, dict)
        and isinstance(data.get("env_config"), dict)
        and not {"simulator", "experiment", "training"} & data.keys()
    )


# Top-level RLlib keys (the old API stack) and where they go in ours.
_MOVED = {
    "num_workers": "training.num_env_runners",
    "num_env_runners": "training.num_env_runners",
    "num_envs_per_worker": "training.envs_per_runner",
    "train_batch_size": "training.settings.train_batch_size_per_learner",
    "learning_starts": "training.settings.num_steps_sampled_before_learning_starts",
    "buffer_size": "training.settings.replay_buffer_config.capacity",
    "timesteps_per_iteration": "training.reporting.min_sample_timesteps_per_iteration",
    "min_sample_timesteps_per_iteration": "training.reporting.min_sample_timesteps_per_iteration",
    "hiddens": "training.model.head_fcnet_hiddens",
    "lambda": "training.settings.lambda_",
    "num_sgd_iter": "training.settings.num_epochs",
    "sgd_minibatch_size": "training.settings.minibatch_size",
    "algorithm": "training.algorithm",  # ours: the original named its trainer in the training script
}
_SETTINGS = {
    "lr", "gamma", "grad_clip", "lr_schedule", "adam_epsilon", "training_intensity",  # every algorithm
    "n_step", "double_q", "dueling", "target_network_update_freq", "tau", "num_atoms", "v_min", "v_max",
    "noisy", "sigma0",  # DQN
    "clip_param", "entropy_coeff", "kl_coeff", "kl_target", "vf_loss_coeff", "vf_clip_param", "use_gae",
    "use_critic",  # PPO
}  # fmt: skip
# Keys with no counterpart here, and why (docs/porting.md says more).
_NOT_USED = {
    "num_gpus": "the learner takes the GPU when there is one",
    "num_gpus_per_worker": "a server's GPU is simulator.carla.gpus; inference: training.gpus_per_runner",
    "num_cpus_per_worker": "Ray gives each env runner one CPU",
    "num_cpus_for_driver": "Ray gives each env runner one CPU",
    "rollout_fragment_length": "RLlib's new API stack sizes fragments itself",
    "batch_mode": "RLlib's new API stack sizes fragments itself",
    "log_level": "train.py prints one progress line an iteration",
    "queue_trials": "removed from Ray Tune",
    "env": "the env is CarlaEnv",
    "callbacks": "the driving-metrics callback is built in",
}
_MODEL_KEYS = {
    "conv_filters", "conv_activation", "fcnet_hiddens", "fcnet_activation", "head_fcnet_hiddens",
    "head_fcnet_activation", "vf_share_layers", "use_lstm", "max_seq_len", "lstm_cell_size", "free_log_std",
}  # fmt: skip
_MODEL_RENAMED = {
    "post_fcnet_hiddens": "head_fcnet_hiddens",
    "post_fcnet_activation": "head_fcnet_activation",
}
_MODEL_NOT_USED = {"dim", "grayscale", "zero_mean", "framestack"}  # the old stack's preprocessor
_CARLA_NOT_USED = {"resolution_x", "resolution_y", "show_display", "enable_rendering"}
_CARLA_OURS = {
    "backend", "port", "tm_port", "launch", "carla_root", "gpus", "extra_args", "ready_timeout",
    "tick_timeout", "recycle_episodes", "recycle_rss_gb",
}  # fmt: skip
_BIRDVIEW_CHANNELS = (*BirdviewSpec.model_fields["channels"].default, "ego")  # the original drew the hero


class MappedConfig:
    """Our config being built, with where each of its keys came from."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.data: dict = {}
        self.origin: dict[str, str] = {}  # our dotted key -> the original's
        self.not_used: list[str] = []

    def set(self, ours: str, value, original: str) -> None:
        *parents, last = ours.split(".")
        node = self.data
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
        self.origin[ours] = original

    def error(self, original: str, message: str) -> ConfigError:
        return ConfigError(f"config error in {self.source}: {original}: {message}")

    def explain(self, e: ConfigError) -> ConfigError:
        """A validation error of the mapped config, with the original key in place of ours."""
        message = str(e)
        for ours in sorted(self.origin, key=len, reverse=True):
            for sep in (":", "."):
                token = f": {ours}{sep}"
                if token in message:
                    original = self.origin[ours]
                    return ConfigError(message.replace(token, f": {original}{sep}", 1) + f" (here: {ours})")
        return e


def map_original_config(data: dict, source: str = "config", cwd: Path | None = None) -> MappedConfig:
    """Our config (`.data`) for an original-layout one, where each key came from (`.origin`) and the
    original keys with no use here (`.not_used`). A key with no counterpart raises ConfigError naming it."""
    m = MappedConfig(source)
    env_config = dict(data["env_config"])
    for key, value in data.items():
        if key == "env_config":
            continue
        if key == "framework":
            if value != "torch":
                raise m.error(key, f"{value!r}: this project trains with torch only; set framework: torch")
        elif key in _MOVED:
            m.set(_MOVED[key], value, key)
        elif key in _SETTINGS:
            m.set(f"training.settings.{key}", value, key)
        elif key == "model":
            _map_model(m, value)
        elif key == "exploration_config":
            _map_exploration(m, value)
        elif key in _NOT_USED:
            m.not_used.append(key)
        else:
            raise m.error(key, "no counterpart in this project's config; remove it (see docs/porting.md)")
    carla_cfg = env_config.pop("carla", None) or {}
    experiment = env_config.pop("experiment", None)
    if env_config:
        raise m.error(
            f"env_config.{next(iter(env_config))}", "unknown key; env_config has carla and experiment"
        )
    _map_carla(m, carla_cfg)
    _map_experiment(m, experiment, Path(source).parent, cwd or Path.cwd())
    return m


def _map_model(m: MappedConfig, model: dict) -> None:
    for key, value in (model or {}).items():
        if key in _MODEL_KEYS:
            m.set(f"training.model.{key}", value, f"model.{key}")
        elif key in _MODEL_RENAMED:
            m.set(f"training.model.{_MODEL_RENAMED[key]}", value, f"model.{key}")
        elif key in _MODEL_NOT_USED:
            m.not_used.append(f"model.{key}")
        else:
            raise m.error(f"model.{key}", "no counterpart in RLlib's new-stack model config; remove it")


def _map_exploration(m: MappedConfig, exploration: dict) -> None:
    if (exploration or {}).get("type") == "EpsilonGreedy":
        schedule = [
            [0, exploration.get("initial_epsilon", 1.0)],
            [exploration.get("epsilon_timesteps", 10000), exploration.get("final_epsilon", 0.05)],
        ]
        m.set("training.settings.epsilon", schedule, "exploration_config")
    else:  # SoftQ and the rest: the new stack's DQN explores epsilon-greedy only
        m.not_used.append("exploration_config")


def _map_carla(m: MappedConfig, carla_cfg: dict) -> None:
    timeout = carla_cfg.get("timeout", 10.0)
    for key, value in carla_cfg.items():
        original = f"env_config.carla.{key}"
        if key == "host":
            m.set("simulator.carla.host", value, original)
        elif key == "timeout":
            m.set("simulator.carla.client_timeout", value, original)
        elif key == "timestep":
            m.set("simulator.timestep", value, original)
        elif key == "retries_on_error":  # it tried this often, `timeout` plus 3 s apart
            m.set("simulator.carla.ready_timeout", float(value) * (timeout + 3.0), original)
        elif key == "quality_level":
            m.set("simulator.carla.quality", value, original)
        elif key == "enable_map_assets":
            m.set("simulator.carla.map_layers", ["All"] if value else ["NONE"], original)
        elif key == "backend":
            m.set("simulator.backend", value, original)
        elif key in _CARLA_OURS:
            m.set(f"simulator.carla.{key}", value, original)
        elif key in _CARLA_NOT_USED:
            m.not_used.append(original)
        else:
            raise m.error(original, "unknown key (see docs/porting.md for the ones this project reads)")


def _map_experiment(m: MappedConfig, experiment, config_dir: Path, cwd: Path) -> None:
    if not isinstance(experiment, dict):
        raise m.error("env_config.experiment", "missing: give the experiment's hero, town and others")
    defaults = ORIGINAL_EXPERIMENT_DEFAULTS
    merged = join_dicts(defaults, experiment)
    kind, import_path = experiment.get("type"), None
    if kind is None:
        kind, import_path = _discover_experiment(m, config_dir, cwd)
    options = {"type": kind, "config": experiment, "import_path": import_path}
    m.set("experiment.type", ADAPTER, "env_config.experiment.type")
    m.set("experiment.options", options, "env_config.experiment")
    m.origin["experiment.options.type"] = "env_config.experiment.type"
    town = merged["town"]
    m.set("simulator.town", town, "env_config.experiment.town")
    m.set("simulator.carla.weather", merged["weather"], "env_config.experiment.weather")
    if "max_steps" in experiment:  # ours: the time limit, whose end is a truncation
        m.set("experiment.max_steps", experiment["max_steps"], "env_config.experiment.max_steps")
    activity = merged["background_activity"]
    background = "env_config.experiment.background_activity"
    m.set("simulator.traffic.vehicles", activity["n_vehicles"], f"{background}.n_vehicles")
    if activity["n_walkers"]:
        m.set("simulator.carla.walkers", activity["n_walkers"], f"{background}.n_walkers")
    if activity.get("seed") is not None:
        m.set("simulator.seed", activity["seed"], "env_config.experiment.background_activity.seed")
    if "tm_hybrid_mode" in experiment.get("background_activity", {}):
        m.not_used.append("env_config.experiment.background_activity.tm_hybrid_mode")
    hero = merged["hero"]
    m.set("experiment.hero.blueprint", hero["blueprint"], "env_config.experiment.hero.blueprint")
    points = _spawn_points(m, hero["spawn_points"] or [], town)
    m.set("experiment.hero.spawn_points", points, "env_config.experiment.hero.spawn_points")
    m.set("experiment.sensors", {}, "env_config.experiment.hero.sensors")
    for name, attributes in (hero["sensors"] or {}).items():
        _map_sensor(m, name, dict(attributes or {}))


def _map_sensor(m: MappedConfig, name: str, attributes: dict) -> None:
    original = f"env_config.experiment.hero.sensors.{name}"
    kind = attributes.pop("type", None)
    if not kind:
        raise m.error(f"{original}.type", "missing: give the sensor's blueprint, e.g. sensor.birdview")
    if kind == "sensor.birdview":
        if set(attributes) - {"size", "radius"} or not {"size", "radius"} <= set(attributes):
            extra = sorted(set(attributes) ^ {"size", "radius"})
            raise m.error(f"{original}.{extra[0]}", "sensor.birdview takes size (pixels) and radius (metres)")
        size, radius = int(attributes["size"]), float(attributes["radius"])
        if radius <= 0:
            raise m.error(f"{original}.radius", f"must be > 0 (got {radius})")
        # The original's view: 2 x radius metres across, centred radius/2 ahead of the hero.
        spec = {
            "type": kind,
            "size": size,
            "pixels_per_meter": size / (2 * radius),
            "ego_offset": size // 4,
            "channels": list(_BIRDVIEW_CHANNELS),
        }
        m.set(f"experiment.sensors.{name}", spec, original)
        return
    if "transform" not in attributes:
        m.set(f"experiment.sensors.{name}", {"type": kind, **attributes}, original)
        return
    pose = str(attributes.pop("transform")).split(",")
    if len(pose) != 6:
        raise m.error(f"{original}.transform", "give 'x,y,z,roll,pitch,yaw'")
    try:
        mount = dict(zip(("x", "y", "z", "roll", "pitch", "yaw"), map(float, pose), strict=True))
    except ValueError:
        raise m.error(f"{original}.transform", "give six numbers 'x,y,z,roll,pitch,yaw'") from None
    m.set(f"experiment.sensors.{name}", {"type": kind, **attributes, **mount}, original)


def _spawn_points(m: MappedConfig, points: list, town) -> list[str]:
    """The original turned 'x,y,z' into a pose heading along the lane there: so do we, from the map."""
    out, lane_map = [], None
    for k, text in enumerate(points):
        parts = [p.strip() for p in str(text).split(",")]
        if len(parts) != 3 or not isinstance(town, str):
            out.append(",".join(parts))
            continue
        if lane_map is None:
            from carla_env.maps.town import TownError, load_town

            try:
                lane_map = load_town(town).map
            except TownError as e:
                raise m.error("env_config.experiment.town", str(e)) from None
        try:
            location = carla.Location(*map(float, parts))
        except ValueError:
            raise m.error(f"env_config.experiment.hero.spawn_points[{k}]", f"{text!r}: not numbers") from None
        waypoint = lane_map.get_waypoint(location)
        r = waypoint.transform.rotation
        out.append(f"{location.x},{location.y},{location.z},{r.roll},{r.pitch},{r.yaw}")
    return out


def _discover_experiment(m: MappedConfig, config_dir: Path, cwd: Path) -> tuple[str, str]:
    """The original named its experiment in the training script: find the one BaseExperiment
    subclass beside the config instead; returns 'module:Class' and the folder to import it from."""
    found = []
    for file in sorted(config_dir.glob("*.py")):
        try:
            tree = ast.parse(file.read_text())
        except (SyntaxError, UnicodeDecodeError):
            continue
        for node in tree.body:
            bases = [getattr(b, "id", getattr(b, "attr", None)) for b in getattr(node, "bases", [])]
            if isinstance(node, ast.ClassDef) and "BaseExperiment" in bases:
                found.append((file, node.name))
    if len(found) != 1:
        what = f"{len(found)} ({', '.join(f'{f.name}:{c}' for f, c in found)})" if found else "none"
        raise m.error(
            "env_config.experiment.type",
            f"missing, and BaseExperiment subclasses beside the config: {what}; "
            "name the class as 'module:Class', as the original's training script did",
        )
    file, name = found[0]
    root = cwd.resolve()
    try:
        relative = file.resolve().relative_to(root).with_suffix("")
        return f"{'.'.join(relative.parts)}:{name}", str(root)
    except ValueError:
        return f"{file.stem}:{name}", str(file.parent.resolve())


# --------------------------------------------------------------------------- loading


def load_any_config(path: str | Path, overrides: dict | None = None):
    """Our Config from a config file of either layout, its backend pinned, and a one-line note
    when it was the original's: (config, backend choice, note or None)."""
    from carla_env.backends import pin_backend

    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError):
        data = None  # load_config says what is wrong with the file
    if not is_original_layout(data):
        return (*pin_backend(load_config(path, overrides), str(path)), None)
    mapped = map_original_config(data, str(path))
    try:
        config: Config = validate_config(deep_merge(mapped.data, overrides or {}), str(path))
        config, choice = pin_backend(config, str(path))
    except ConfigError as e:
        raise mapped.explain(e) from None
    kind = config.experiment.options["type"]
    ignored = f"; not used here: {', '.join(mapped.not_used)}" if mapped.not_used else ""
    note = f"original rllib-integration config: running {kind} through carla_env.compat (docs/porting.md){ignored}"
    return config, choice, note
