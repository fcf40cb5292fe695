"""Configuration: YAML merged over defaults, validated at load time.

Every error is one line naming the key path and what to do, e.g.
`config error: simulator.traffic.vehicles: must be >= 0 (got -3)`.
"""

from __future__ import annotations

import difflib
import importlib
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError, field_validator

from carla_env.maps.town import TownError, check_town
from carla_env.sensors.birdview import BirdviewSpec


class ConfigError(ValueError):
    """A configuration mistake; str(e) is the one-line message for the user, `key` the dotted config
    key it is about where there is one (train.py names the --set that gave it)."""

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class TrafficConfig(_Strict):
    vehicles: int = Field(30, ge=0, le=1000, description="background vehicles")
    spawn_spacing: float = Field(12.0, gt=4.0, description="metres between spawn slots")


class LightsConfig(_Strict):
    green: float = Field(10.0, gt=0)
    yellow: float = Field(3.0, ge=0)
    red: float = Field(2.0, ge=0, description="all-red clearance after each phase")


# carla.MapLayer names (carla 0.9.16), checked at config load.
MapLayerName = Literal[
    "NONE",
    "Buildings",
    "Decals",
    "Foliage",
    "Ground",
    "ParkedVehicles",
    "Particles",
    "Props",
    "StreetLights",
    "Walls",
    "All",
]


class CarlaServerConfig(_Strict):
    """The real CARLA backend: a server this process launches and owns, or one it attaches to."""

    launch: bool = Field(True, description="start $CARLA_ROOT/CarlaUE4.sh; false: attach to host:port")
    host: str = "localhost"
    port: int = Field(2000, ge=1024, le=65000, description="first RPC port; runner k uses port + 3k")
    tm_port: int = Field(8000, ge=1024, le=65000, description="first Traffic Manager port; runner k: + k")
    carla_root: str | None = Field(None, description="default: $CARLA_ROOT")
    quality: Literal["Low", "Epic"] = "Low"
    gpus: list[int] = Field(
        default_factory=list, description="graphics adapters, round-robin; empty: all visible"
    )
    extra_args: list[str] = Field(default_factory=list)
    ready_timeout: float = Field(120.0, gt=0, description="seconds for a launched server to answer")
    client_timeout: float = Field(10.0, gt=0, description="seconds for one client call")
    map_load_timeout: float = Field(
        300.0, gt=0, description="seconds for a map load (a cold disk; the leaderboard allows 300)"
    )
    tick_timeout: float = Field(10.0, gt=0, description="a tick longer than this restarts the server")
    isolate_client: bool = Field(
        True,
        description="the carla.Client, TM and sensors in a child process per server, so a LibCarla abort "
        "ends only that child; false: in this process (experiments then get the full CARLA API)",
    )
    client_process_grace: float = Field(
        5.0, gt=0, description="seconds past a call's own time-out before a silent client process is killed"
    )
    runner_restarts: int = Field(
        5, ge=0, description="env-runner restarts RLlib allows a run (a crashing server can abort its client)"
    )
    recycle_episodes: int = Field(0, ge=0, description="relaunch after this many episodes; 0: never")
    recycle_rss_gb: float = Field(0.0, ge=0, description="relaunch above this server RSS; 0: never")
    walkers: int = Field(0, ge=0, le=1000, description="background pedestrians (both backends)")
    walker_cross_factor: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="share of walker routes that may cross roads anywhere (CARLA's default 0)",
    )
    map_layers: list[MapLayerName] = Field(
        default_factory=lambda: ["All"],
        description="layers loaded in an _Opt town (e.g. [Ground, StreetLights] for a bare town)",
    )
    weather: str = Field("ClearNoon", description="a carla.WeatherParameters preset")


class SimulatorConfig(_Strict):
    backend: Literal["auto", "embedded", "carla"] = "auto"
    # One town, or a list: env runner k drives towns[k % len] (training on several towns).
    town: str | list[str] = "GridTown01"
    timestep: float = Field(0.05, gt=0.0, le=0.5, description="fixed_delta_seconds")
    seed: int = 0
    traffic: TrafficConfig = TrafficConfig()
    lights: LightsConfig = LightsConfig()
    carla: CarlaServerConfig = CarlaServerConfig()

    @field_validator("town")
    @classmethod
    def _town_exists(cls, town: str | list[str]) -> str | list[str]:
        if isinstance(town, list) and not town:
            raise ValueError("give at least one town")
        for name in [town] if isinstance(town, str) else town:
            try:
                check_town(name)
            except TownError as e:
                raise ValueError(str(e)) from None
        return town

    def for_worker(self, index: int) -> SimulatorConfig:
        """This config with the one town that env runner `index` drives."""
        if isinstance(self.town, str):
            return self
        return self.model_copy(update={"town": self.town[index % len(self.town)]})


class HeroConfig(_Strict):
    blueprint: str = "vehicle.tesla.model3"
    # The original's strings, "x,y,z[,roll,pitch,yaw]"; empty: random spawn points of the town.
    spawn_points: list[str] = Field(default_factory=list)

    @field_validator("spawn_points")
    @classmethod
    def _parse(cls, points: list[str]) -> list[str]:
        from carla_env.experiment import parse_transform

        for p in points:
            parse_transform(p)
        return points


class SensorConfig(BaseModel):
    """A sensor by CARLA blueprint name; other keys are its blueprint attributes and its mounting
    (x, y, z, roll, pitch, yaw on the hero), checked by the server when it is spawned."""

    model_config = ConfigDict(extra="allow")
    type: str


class BirdviewConfig(BirdviewSpec):
    """`sensor.birdview`: the shared bird's-eye-view renderer, its attributes checked here."""

    type: Literal["sensor.birdview"] = "sensor.birdview"


def _sensor_kind(value: Any) -> str:
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    return "birdview" if kind == "sensor.birdview" else "sensor"


AnySensorConfig = Annotated[
    Annotated[BirdviewConfig, Tag("birdview")] | Annotated[SensorConfig, Tag("sensor")],
    Discriminator(_sensor_kind),
]


class ExperimentConfig(_Strict):
    type: str = Field(
        "", description="experiment class as 'module:Class', e.g. experiments.dqn.experiment:DQNExperiment"
    )
    hero: HeroConfig = HeroConfig()
    sensors: dict[str, AnySensorConfig] = Field(default_factory=dict)
    max_steps: int = Field(1000, gt=0, description="episode truncated after this many steps")
    route_length: float = Field(250.0, gt=10.0, description="metres of route planned ahead of the hero")
    # Validated by the experiment class's Options model.
    options: dict[str, Any] = Field(default_factory=dict)


class StopConfig(_Strict):
    timesteps: int | None = Field(200_000, gt=0, description="env steps sampled")
    iterations: int | None = Field(None, gt=0)
    minutes: float | None = Field(None, gt=0, description="training wall time (Tune's time_total_s)")


class TrainingConfig(_Strict):
    algorithm: Literal["DQN", "PPO"] = "DQN"
    num_env_runners: int = Field(0, ge=0, description="0: sample in the learner's process")
    envs_per_runner: int = Field(
        1, ge=1, description="envs stepped by one runner; their inference is batched"
    )
    # GPU share per env runner for the policy's inference (only used when CUDA is present); the
    # learner takes what the runners leave of GPU 0.
    gpus_per_runner: float = Field(0.0, ge=0.0, lt=1.0)
    checkpoint_every: int = Field(5, gt=0, description="iterations between checkpoints")
    checkpoint_minutes: float = Field(
        5.0, gt=0, description="also checkpoint at the first iteration end this many minutes after the last"
    )
    progress_seconds: float = Field(30.0, gt=0, description="a progress line at least this often")
    keep_checkpoints: int = Field(3, gt=0)
    # RLlib's seed (AlgorithmConfig.debugging): torch and numpy in every process, the first weights and
    # each env's resets. null: a fresh draw each run. Runs with one seed start alike; on a GPU, cuDNN's
    # kernels and the runners' timing still let them drift apart.
    seed: int | None = Field(None, ge=0)
    stop: StopConfig = StopConfig()
    model: dict[str, Any] = Field(default_factory=dict, description="RLlib model_config")
    settings: dict[str, Any] = Field(default_factory=dict, description="AlgorithmConfig.training(**settings)")
    reporting: dict[str, Any] = Field(
        default_factory=dict, description="AlgorithmConfig.reporting(**reporting)"
    )


ProfileName = Literal["cpu", "gpu"]


class Config(_Strict):
    simulator: SimulatorConfig = SimulatorConfig()
    experiment: ExperimentConfig = ExperimentConfig()
    training: TrainingConfig = TrainingConfig()
    # Hardware profiles: a partial config that train.py merges over the rest on that hardware (`cpu`
    # without a CUDA GPU, `gpu` with one). A run saves the merged config, `profile` naming what was applied.
    profiles: dict[ProfileName, dict[str, Any]] = Field(default_factory=dict)
    profile: ProfileName | None = Field(None, description="the profile merged into this config")


def apply_profile(
    config: Config, name: ProfileName | None, source: str = "config", overrides: dict | None = None
) -> Config:
    """`config` with profiles.NAME merged over it and `overrides` (command-line options) over that,
    validated; `config` as it is for None."""
    if name is None:
        return config
    if name not in config.profiles:
        have = ", ".join(config.profiles) or "none"
        raise ConfigError(f"{source} has no profiles.{name} (its profiles: {have})")
    base = config.model_dump(exclude={"profiles", "profile"})
    merged = deep_merge(deep_merge(base, config.profiles[name]), overrides or {})
    return validate_config({**merged, "profile": name}, f"{source} with profiles.{name}")


def deep_merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _sensor_tag_dropped(loc: tuple) -> tuple[tuple, type[BaseModel] | None]:
    """A sensor's error location carries the union's tag after its name: drop it; return the sensor's model."""
    loc = tuple(loc)
    for i in range(len(loc) - 2):
        if loc[i] == "sensors" and loc[i + 2] in ("birdview", "sensor"):
            model = BirdviewConfig if loc[i + 2] == "birdview" else SensorConfig
            return loc[: i + 2] + loc[i + 3 :], model
    return loc, None


def _describe(err: dict, model: type[BaseModel]) -> tuple[str, str]:
    """(the dotted key, 'key: what is wrong and how to fix it') of one pydantic error."""
    loc, sensor_model = _sensor_tag_dropped(err["loc"])
    path = ".".join(str(p) for p in loc)
    kind = err["type"]
    if kind == "extra_forbidden":
        parent = model
        for part in loc[:-1]:
            field = parent.model_fields.get(str(part)) if isinstance(parent, type) else None
            parent = field.annotation if field is not None else None
        if sensor_model is not None:
            parent = sensor_model
        valid = (
            list(parent.model_fields) if isinstance(parent, type) and issubclass(parent, BaseModel) else []
        )
        hint = difflib.get_close_matches(str(loc[-1]), valid, n=1)
        fix = f"did you mean {hint[0]!r}?" if hint else f"valid keys here: {', '.join(valid)}"
        return path, f"{path}: unknown key; {fix}"
    msg = err["msg"].removeprefix("Value error, ")
    got = err.get("input")
    shown = "" if isinstance(got, dict) or kind == "value_error" else f" (got {got!r})"
    return path, f"{path}: {msg}{shown}"


def validate_config(data: dict, source: str = "config") -> Config:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping with 'simulator' and 'experiment' keys")
    try:
        config = Config.model_validate(data)
    except ValidationError as e:
        key, text = _first_error(e, Config)
        raise ConfigError(f"config error in {source}: {text}", key) from None
    if config.experiment.type:  # before the profiles: an error of the config's own is named as its own
        cls = experiment_class(config.experiment.type, source)
        try:
            cls.Options.model_validate(config.experiment.options)
        except ValidationError as e:
            key, text = _first_error(e, cls.Options)
            raise ConfigError(
                f"config error in {source}: experiment.options.{text}", f"experiment.options.{key}"
            ) from None
    for name, partial in config.profiles.items():  # a typo in a profile fails here, on any machine
        if {"profiles", "profile"} & partial.keys():
            raise ConfigError(
                f"config error in {source}: profiles.{name}: a profile cannot hold profiles",
                f"profiles.{name}",
            )
        if "backend" in (partial.get("simulator") or {}):  # the backend has its own rule (carla_env.backends)
            raise ConfigError(
                f"config error in {source}: profiles.{name}.simulator.backend: a profile cannot choose "
                "the backend; set simulator.backend",
                f"profiles.{name}.simulator.backend",
            )
        merged = deep_merge({k: v for k, v in data.items() if k != "profiles"}, partial)
        validate_config(merged, f"{source} with profiles.{name}")
    return config


def _first_error(e: ValidationError, model: type[BaseModel]) -> tuple[str, str]:
    """(key, message) of the first of e's errors, the message saying how many more there are."""
    more = f" (+{len(e.errors()) - 1} more)" if len(e.errors()) > 1 else ""
    key, text = _describe(e.errors()[0], model)
    return key, text + more


def experiment_class(path: str, source: str = "config"):
    """Import 'module:Class' (experiments live outside carla_env, so they are named, not imported)."""
    from carla_env.experiment import BaseExperiment

    module_name, _, class_name = path.partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError, ValueError) as e:
        raise ConfigError(
            f"config error in {source}: experiment.type: cannot import {path!r} ({e}); use 'package.module:ClassName'",
            "experiment.type",
        ) from None
    if not (isinstance(cls, type) and issubclass(cls, BaseExperiment)):
        raise ConfigError(
            f"config error in {source}: experiment.type: {path!r} is not a BaseExperiment subclass",
            "experiment.type",
        )
    return cls


def load_config(path: str | Path | None = None, overrides: dict | None = None) -> Config:
    """Load a YAML config over the defaults, apply overrides, validate."""
    data: dict = {}
    source = "defaults and command-line options"
    if path is not None:
        path = Path(path)
        source = str(path)
        try:
            data = yaml.safe_load(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" line {mark.line + 1}" if mark else ""
            raise ConfigError(
                f"config error in {path}{where}: not valid YAML ({getattr(e, 'problem', e)})"
            ) from None
        if data is None:
            raise ConfigError(
                f"config file {path} is empty; start from an experiment's config, e.g. experiments/dqn/config.yaml"
            )
    if overrides:
        data = deep_merge(data, overrides)
    return validate_config(data, source)
