"""CarlaEnv: a gymnasium env over a simulator backend and a BaseExperiment."""

from __future__ import annotations

import logging
from pathlib import Path

import gymnasium as gym

from carla_env.backends import make_core, pin_backend
from carla_env.config import Config, experiment_class, load_config, validate_config
from carla_env.driving_state import DrivingStateTracker
from carla_env.experiment import parse_transform
from carla_env.metrics import DrivingMetrics
from carla_env.sensors.factory import BirdviewSensor, make_sensor
from carla_env.simulator import SimulatorRestarted

log = logging.getLogger(__name__)


def slot_index(worker_index: int, vector_index: int, num_workers: int) -> int:
    """This env's slot among the machine's envs (a CARLA server's ports): worker indices run
    0..num_workers (0 is the local runner)."""
    return worker_index + (num_workers + 1) * vector_index


class CarlaEnv(gym.Env):
    """Built from a validated config (a Config or the dict of one); knows nothing of a backend's insides."""

    metadata = {"render_modes": ["rgb_array"]}

    def __init__(self, config: Config | dict, render_mode: str | None = None) -> None:
        if isinstance(config, (str, Path)):  # gymnasium.make(ENV_ID, config="experiments/dqn/config.yaml")
            config = load_config(config)
        self.config = config if isinstance(config, Config) else validate_config(dict(config), "env config")
        auto = self.config.simulator.backend == "auto"  # a run pins it once (train.py); a bare env here
        self.config, choice = pin_backend(self.config, "env config")
        if auto:
            log.info("%s", choice)
        # RLlib passes an EnvContext: runner k takes the k-th town of a town list.
        self.slot = slot_index(
            getattr(config, "worker_index", 0),
            getattr(config, "vector_index", 0),
            getattr(config, "num_workers", 0),
        )
        self.simulator_config = self.config.simulator.for_worker(self.slot)
        exp_cfg = self.config.experiment
        if not exp_cfg.type:
            raise ValueError("experiment.type is required: name a BaseExperiment subclass as 'module:Class'")
        cls = experiment_class(exp_cfg.type)
        self.experiment = cls(exp_cfg, cls.Options.model_validate(exp_cfg.options))
        self.action_space = self.experiment.get_action_space()
        self.observation_space = self.experiment.get_observation_space()
        self.render_mode = render_mode
        self.metadata = {**self.metadata, "render_fps": round(1.0 / self.config.simulator.timestep)}
        self.core = None
        self.sensors: dict = {}
        self._spawn_points = [parse_transform(p) for p in exp_cfg.hero.spawn_points]
        self._steps = 0
        self.metrics = DrivingMetrics()
        self.driving: DrivingStateTracker | None = None  # the episode's, from reset on
        self._said: set[str] = set()  # kinds of unmet requests already logged

    # ------------------------------------------------------------------ gymnasium API
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if self.core is None:
            cameras = any(
                s.type.startswith("sensor.camera.") for s in self.config.experiment.sensors.values()
            )
            self.core = make_core(
                self.simulator_config,
                self.config.experiment.hero.blueprint,
                slot=self.slot,
                rendering=cameras,
            )
        self._destroy_sensors()
        episode_seed = int(self.np_random.integers(2**31))
        hero_at = self._spawn_points[episode_seed % len(self._spawn_points)] if self._spawn_points else None
        try:
            self.core.reset(seed=episode_seed, hero_transform=hero_at)
        except SimulatorRestarted:  # the server was replaced while resetting: a fresh one resets once more
            self.core.reset(seed=episode_seed, hero_transform=hero_at)
        hero = self.core.hero
        dt = self.config.simulator.timestep
        self.sensors = {
            name: make_sensor(name, sensor, self.core, dt)
            for name, sensor in self.config.experiment.sensors.items()
        }
        self.experiment.reset(self.core, self.np_random)
        for sensor in self.sensors.values():  # the BEV's route channel shows the experiment's route
            if isinstance(sensor, BirdviewSensor):
                sensor.renderer.set_route(self.experiment.route.points)
        self._steps = 0
        self.metrics = DrivingMetrics(route_length=self.experiment.route.length)
        self.driving = DrivingStateTracker(self.experiment.route, self.config.experiment.sensors, hero, dt)
        self.experiment.driving_state = None  # no step driven yet
        frame = self.core.tick(None)
        obs, info = self.experiment.get_observation(self._read(frame), self.core)
        self._last_obs = obs
        info = {**info, "backend": self.core.backend}
        unmet = self._unmet_requests()
        if unmet:
            info["not_honoured"] = unmet
        return obs, info

    def step(self, action):
        control = self.experiment.compute_action(action)
        try:
            frame = self.core.tick(control)
            data = self._read(frame)  # a camera that stopped streaming replaces the server too
        except SimulatorRestarted as e:  # a crashed or hung server was replaced: this episode is over
            self.sensors = {}  # their actors went with the old server
            info = {**self.metrics.summary(), "simulator_restart": str(e), **self.core.stats()}
            return self._last_obs, 0.0, False, True, info
        self._steps += 1
        # The step's facts, once: the experiment's hooks and the metrics all read this state.
        state = self.experiment.driving_state = self.driving.step(self.core, data)
        obs, info = self.experiment.get_observation(data, self.core)
        terminated, truncated = self.experiment.get_done_status(obs, self.core)
        truncated = truncated or self._steps >= self.config.experiment.max_steps
        reward = float(self.experiment.compute_reward(obs, self.core))
        self.metrics.update(self.config.simulator.timestep, state)
        info = {**info, **self.metrics.summary(), **self.core.stats()}
        self._last_obs = obs
        return obs, reward, bool(terminated), bool(truncated), info

    def render(self):
        """The colour bird's-eye view of the newest step (render_mode 'rgb_array'), if a BEV sensor exists."""
        for sensor in self.sensors.values():
            if isinstance(sensor, BirdviewSensor):
                return sensor.colour_frame()
        return None

    def close(self) -> None:
        self._destroy_sensors()
        if self.core is not None:
            self.core.close()
            self.core = None

    # ------------------------------------------------------------------ internals
    def _unmet_requests(self) -> list[str]:
        """What this episode could not give of what the config asked for, each with its reason and fix;
        every kind is logged once per env (the episode's info carries it every time)."""
        notes = {}
        if self.experiment.route.shortfall:
            notes["route_length"] = self.experiment.route.shortfall
        traffic = self.config.simulator.traffic
        spawned = len(self.core.world.get_actors().filter("vehicle.*")) - 1  # less the hero
        if spawned < traffic.vehicles:
            notes["traffic"] = (
                f"traffic.vehicles: {spawned} of the {traffic.vehicles} asked were spawned: "
                f"{self.core.town.name} has no more free spawn slots {traffic.spawn_spacing:g} m apart; "
                "ask for fewer, lower traffic.spawn_spacing or use a larger town"
            )
        for kind, note in notes.items():
            if kind not in self._said:
                self._said.add(kind)
                log.warning(note)
        return list(notes.values())

    def _read(self, frame: int) -> dict:
        return {name: sensor.read(frame) for name, sensor in self.sensors.items()}

    def _destroy_sensors(self) -> None:
        for sensor in self.sensors.values():
            sensor.destroy()
        self.sensors = {}
