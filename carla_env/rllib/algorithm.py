"""The RLlib side of a run: the AlgorithmConfig built from a validated config, Ray started with the env
registered, a new run's weights taken from another checkpoint. train.py and the benchmarks use these."""

from __future__ import annotations

import os
from pathlib import Path

from carla_env.config import ConfigError

ENV_NAME = "carla_env"  # the env's name in Ray's registry: remote runners build it from the config


def build_algo_config(config):
    from ray.rllib.algorithms.dqn import DQNConfig
    from ray.rllib.algorithms.ppo import PPOConfig
    from ray.rllib.core.rl_module.rl_module import RLModuleSpec

    from carla_env.env import CarlaEnv
    from carla_env.rllib.callbacks import DrivingMetricsCallback
    from carla_env.rllib.env_runner import CarlaEnvRunner
    from carla_env.rllib.modules import BevDQNCatalog, BevDQNModule, BevPPOCatalog, BevPPOModule, is_bev_space

    probe = CarlaEnv(config)  # spaces only: no world is built before reset
    tr = config.training
    config_class, module, catalog = {
        "DQN": (DQNConfig, BevDQNModule, BevDQNCatalog),
        "PPO": (PPOConfig, BevPPOModule, BevPPOCatalog),
    }[tr.algorithm]
    algo = config_class(algo_class=algorithm_class(config)).environment(
        ENV_NAME, env_config=config.model_dump()
    )
    gpu = has_gpu()
    runner_gpus = tr.gpus_per_runner if gpu else 0.0
    if runner_gpus * max(tr.num_env_runners, 1) >= 1.0:
        raise ConfigError(
            f"config error: training.gpus_per_runner: {tr.gpus_per_runner} x {tr.num_env_runners} runners "
            "leaves no GPU for the learner; lower it below 1/num_env_runners"
        )
    algo = algo.env_runners(
        env_runner_cls=CarlaEnvRunner,  # each env of a runner its own slot (town, GPU, server ports)
        num_env_runners=tr.num_env_runners,
        num_envs_per_env_runner=tr.envs_per_runner,
        num_gpus_per_env_runner=runner_gpus,
    )
    if is_bev_space(probe.observation_space):  # the module takes the env's BEV as it comes
        algo = algo.rl_module(
            rl_module_spec=RLModuleSpec(module_class=module, catalog_class=catalog),
            model_config=dict(tr.model),
        )
    else:
        algo = algo.rl_module(model_config=dict(tr.model))
    for section, values in (("training", tr.settings), ("reporting", tr.reporting)):
        try:
            algo = getattr(algo, section)(**values)
        except TypeError as e:
            key = "settings" if section == "training" else section
            raise ConfigError(
                f"config error: training.{key}: {e}; see {config_class.__name__}.{section}() for valid keys"
            ) from None
    if tr.seed is not None:
        algo = algo.debugging(seed=tr.seed)
    algo = algo.fault_tolerance(**runner_fault_tolerance(config))
    algo = algo.callbacks(DrivingMetricsCallback)
    if not gpu:
        return algo.resources(num_gpus=0)
    return algo.learners(
        num_gpus_per_learner=round(1.0 - runner_gpus * tr.num_env_runners, 3) if runner_gpus else 1
    )


def algorithm_class(config):
    """RLlib's algorithm, or ArrayReplayDQN where DQN's replay_buffer_config.type is TransitionReplay."""
    tr = config.training
    buffer = tr.settings.get("replay_buffer_config", {}).get("type")
    if tr.algorithm == "DQN" and buffer == "TransitionReplay":
        from carla_env.rllib.replay import ArrayReplayDQN

        refusals = {
            "settings.store_buffer_in_checkpoints": tr.settings.get("store_buffer_in_checkpoints"),
            "settings.n_step": type(tr.settings.get("n_step", 1)) is not int,
            "model.use_lstm": tr.model.get("use_lstm"),
        }
        for key, refused in refusals.items():
            if refused:
                raise ConfigError(
                    f"config error: training.{key}: the TransitionReplay buffer takes one integer n_step, "
                    "stateless modules, and is not saved in checkpoints; drop the key or use "
                    "replay_buffer_config.type: PrioritizedEpisodeReplayBuffer"
                )
        return ArrayReplayDQN
    from ray.rllib.algorithms.dqn import DQN
    from ray.rllib.algorithms.ppo import PPO

    return {"DQN": DQN, "PPO": PPO}[tr.algorithm]


def runner_fault_tolerance(config) -> dict:
    """AlgorithmConfig.fault_tolerance(): a CARLA server's crash can abort its client's process, so a
    bounded number of env-runner restarts (the reaper kills the orphaned server); the embedded
    backend's errors are deterministic and must fail the run, not restart runners forever."""
    if config.simulator.backend != "carla":
        return {"restart_failed_env_runners": False}
    return {
        "restart_failed_env_runners": True,
        "max_num_env_runner_restarts": config.simulator.carla.runner_restarts,
        "delay_between_env_runner_restarts_s": 10.0,
    }


def has_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def start_from_module(path: str, *, algorithm, **_) -> None:
    """Algorithm init: load the policy weights (the learner's, then synced to every EnvRunner)."""
    from carla_env.rllib.policy import MODULE_PATH

    algorithm.restore_from_path(path, component=MODULE_PATH.as_posix())


def init_ray(import_root: str | Path, address: str | None = None) -> None:
    """Start (or join) Ray and register the env. `import_root` goes on every worker's PYTHONPATH: the
    folder the config's experiment ('module:Class') is imported from, e.g. the repo root."""
    import ray
    from ray import tune

    from carla_env.env import CarlaEnv

    pythonpath = os.pathsep.join(filter(None, [str(import_root), os.environ.get("PYTHONPATH")]))
    ray.init(
        address=address or "local",  # never join a cluster by accident (e.g. one `ray start` left running)
        runtime_env={"env_vars": {"PYTHONPATH": pythonpath}},
        include_dashboard=False,
        log_to_driver=False,
        **({} if address else {"num_cpus": max(2, os.cpu_count() or 2)}),
    )
    tune.register_env(ENV_NAME, lambda env_config: CarlaEnv(env_config))
