"""Train a driving agent with Ray RLlib (new API stack) under Ray Tune.

    python train.py experiments/dqn/config.yaml [--name N] [--dir D] [--restore | --overwrite]
                    [--address auto] [--num-env-runners K] [--stop-timesteps T] [--stop-iters I]
                    [--init-module CHECKPOINT]

Checkpoints every `training.checkpoint_every` iterations and at the end; `--restore` resumes an
interrupted run (Ctrl-C or kill -9) from its last checkpoint; `--init-module` starts a new run from
another checkpoint's policy (e.g. a behaviour-cloned one). Exit code 2 on bad input.
"""

from __future__ import annotations

import argparse
import functools
import os
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
ENV_NAME = "carla_env"
CONFIG_NAME = (
    "carla_env_config.yaml"  # the validated config, beside the run's checkpoints (infer.py reads it)
)


def save_config(config, path: Path) -> None:
    import yaml

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
    os.replace(tmp, path)  # never a half-written config


def load_run_config(path, overrides: dict, restoring: Path | None):
    """The run's config with its backend pinned (resolved once, saved with the run); a resumed run
    keeps the config it was started with, so it runs on the same backend."""
    from carla_env.backends import pin_backend
    from carla_env.config import load_config

    saved = restoring / CONFIG_NAME if restoring is not None else None
    if saved is not None and saved.is_file():
        return pin_backend(load_config(saved, overrides), str(saved))
    return pin_backend(load_config(path, overrides), str(path))


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="experiment config YAML, e.g. experiments/dqn/config.yaml")
    p.add_argument("--name", help="run name (default: the experiment folder's name)")
    p.add_argument("--dir", default=str(ROOT / "runs"), help="storage: a local folder or an s3:// URI")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--restore", action="store_true", help="resume the run NAME from its last checkpoint")
    mode.add_argument("--overwrite", action="store_true", help="delete an existing run NAME and start afresh")
    p.add_argument("--address", help="join a running Ray cluster ('auto')")
    p.add_argument(
        "--init-module",
        type=Path,
        help="start from this checkpoint's policy weights (a run's checkpoint_N, or bench/imitation.py's)",
    )
    p.add_argument("--num-env-runners", type=int)
    p.add_argument("--stop-timesteps", type=int)
    p.add_argument("--stop-iters", type=int)
    return p.parse_args(argv)


def build_algo_config(config):
    from ray.rllib.algorithms.dqn import DQNConfig
    from ray.rllib.algorithms.ppo import PPOConfig
    from ray.rllib.core.rl_module.rl_module import RLModuleSpec

    from carla_env.config import ConfigError
    from carla_env.env import CarlaEnv
    from carla_env.rllib.callbacks import DrivingMetricsCallback
    from carla_env.rllib.modules import BevDQNCatalog, BevDQNModule, BevPPOCatalog, BevPPOModule, is_bev_space

    probe = CarlaEnv(config)  # spaces only: no world is built before reset
    tr = config.training
    algo_class, module, catalog = {
        "DQN": (DQNConfig, BevDQNModule, BevDQNCatalog),
        "PPO": (PPOConfig, BevPPOModule, BevPPOCatalog),
    }[tr.algorithm]
    algo = algo_class().environment(ENV_NAME, env_config=config.model_dump())
    gpu = _has_gpu()
    runner_gpus = tr.gpus_per_runner if gpu else 0.0
    if runner_gpus * max(tr.num_env_runners, 1) >= 1.0:
        raise ConfigError(
            f"config error: training.gpus_per_runner: {tr.gpus_per_runner} x {tr.num_env_runners} runners "
            "leaves no GPU for the learner; lower it below 1/num_env_runners"
        )
    algo = algo.env_runners(
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
                f"config error: training.{key}: {e}; see {algo_class.__name__}.{section}() for valid keys"
            ) from None
    algo = algo.fault_tolerance(**runner_fault_tolerance(config))
    algo = algo.callbacks(DrivingMetricsCallback)
    if not gpu:
        return algo.resources(num_gpus=0)
    return algo.learners(
        num_gpus_per_learner=round(1.0 - runner_gpus * tr.num_env_runners, 3) if runner_gpus else 1
    )


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


def _has_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def module_dir(checkpoint: Path) -> Path:
    from carla_env.rllib.policy import MODULE_PATH

    return Path(checkpoint).resolve() / MODULE_PATH


def check_init_module(checkpoint: Path, config):
    """The module loads and fits this experiment's spaces: checked before the run exists. Returns it."""
    from carla_env.config import ConfigError
    from carla_env.env import CarlaEnv
    from carla_env.rllib.policy import ModulePolicy

    if not module_dir(checkpoint).is_dir():
        raise ConfigError(
            f"--init-module: no policy module under {checkpoint}; give a checkpoint folder "
            "(a run's checkpoint_N, or bench/imitation.py's)"
        )
    try:
        module = ModulePolicy.from_checkpoint(checkpoint).module
    except Exception as e:  # a truncated or foreign checkpoint
        raise ConfigError(f"--init-module: cannot load {checkpoint}: {type(e).__name__}: {e}") from None
    env = CarlaEnv(config)  # spaces only: no world is built before reset
    for what, mine, theirs in (
        ("observations", env.observation_space, module.observation_space),
        ("actions", env.action_space, module.action_space),
    ):
        if mine != theirs:
            raise ConfigError(
                f"--init-module: {checkpoint} takes {what} {theirs}, this config gives {mine}; "
                "use a checkpoint of the same experiment"
            )
    return module


def start_from_module(path: str, *, algorithm, **_) -> None:
    """Algorithm init: load the policy weights (the learner's, then synced to every EnvRunner)."""
    from carla_env.rllib.policy import MODULE_PATH

    algorithm.restore_from_path(path, component=MODULE_PATH.as_posix())


def init_ray(address: str | None = None) -> None:
    """Start (or join) Ray with this repo importable in every worker, and register the env."""
    import ray
    from ray import tune

    from carla_env.env import CarlaEnv

    pythonpath = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    ray.init(
        address=address or "local",  # never join a cluster by accident (e.g. one `ray start` left running)
        runtime_env={"env_vars": {"PYTHONPATH": pythonpath}},
        include_dashboard=False,
        log_to_driver=False,
        **({} if address else {"num_cpus": max(2, os.cpu_count() or 2)}),
    )
    tune.register_env(ENV_NAME, lambda env_config: CarlaEnv(env_config))


def main(argv=None) -> int:
    args = parse_args(argv)
    from carla_env.config import ConfigError

    overrides: dict = {"training": {}}
    if args.num_env_runners is not None:
        overrides["training"]["num_env_runners"] = args.num_env_runners
    stop = {}
    if args.stop_timesteps is not None:
        stop["timesteps"] = args.stop_timesteps
    if args.stop_iters is not None:
        stop["iterations"] = args.stop_iters
    if stop:
        overrides["training"]["stop"] = stop
    name = args.name or Path(args.config).resolve().parent.name
    storage = args.dir if "://" in args.dir else str(Path(args.dir).resolve())
    run_dir = Path(storage) / name if "://" not in storage else None
    try:
        config, backend = load_run_config(args.config, overrides, run_dir if args.restore else None)
    except ConfigError as e:
        print(e, file=sys.stderr)
        return 2
    print(backend)
    if run_dir is not None and run_dir.exists() and not (args.restore or args.overwrite):
        print(
            f"run {run_dir} exists; pass --restore to resume it or --overwrite to start afresh",
            file=sys.stderr,
        )
        return 2
    if args.restore and (args.stop_timesteps or args.stop_iters):
        print(
            "--restore continues a run to the stop it was started with; drop --stop-timesteps/--stop-iters",
            file=sys.stderr,
        )
        return 2
    if args.restore and args.init_module:
        print(
            "--init-module starts a run; --restore continues one from its own weights: drop one",
            file=sys.stderr,
        )
        return 2
    if args.init_module:
        try:
            check_init_module(args.init_module, config)
        except ConfigError as e:
            print(e, file=sys.stderr)
            return 2
    if args.restore and run_dir is not None and not run_dir.exists():
        print(f"--restore: no run at {run_dir}; drop --restore to start one", file=sys.stderr)
        return 2
    if args.overwrite and run_dir is not None and run_dir.exists():
        shutil.rmtree(run_dir)
    if run_dir is not None and not args.restore:
        save_config(config, run_dir / CONFIG_NAME)

    # Snapshot the experiment state after every result (not on Tune's timer), so a kill -9 loses at
    # most one checkpoint interval: restore then finds the newest checkpoint.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "0")
    from ray import tune

    from carla_env.rllib.progress import ProgressLine

    try:
        algo_config = build_algo_config(config)
    except ConfigError as e:
        print(e, file=sys.stderr)
        return 2
    if args.init_module:
        algo_config = algo_config.callbacks(
            on_algorithm_init=functools.partial(start_from_module, str(module_dir(args.init_module)))
        )
    init_ray(args.address)
    tr = config.training
    stop = {}
    if tr.stop.timesteps:
        stop["num_env_steps_sampled_lifetime"] = tr.stop.timesteps
    if tr.stop.iterations:
        stop["training_iteration"] = tr.stop.iterations
    run_config = tune.RunConfig(
        name=name,
        storage_path=storage,
        stop=stop,
        verbose=0,
        callbacks=[ProgressLine()],
        checkpoint_config=tune.CheckpointConfig(
            checkpoint_frequency=tr.checkpoint_every, checkpoint_at_end=True, num_to_keep=tr.keep_checkpoints
        ),
        failure_config=tune.FailureConfig(max_failures=0),
    )
    if args.restore:
        tuner = tune.Tuner.restore(
            str(run_dir) if run_dir else f"{storage}/{name}",
            trainable=tr.algorithm,
            resume_errored=True,
            param_space=algo_config,
        )
    else:
        tuner = tune.Tuner(tr.algorithm, param_space=algo_config, run_config=run_config)
    results = tuner.fit()
    best = results[0]
    if best.error:
        print(f"training failed: {best.error}", file=sys.stderr)
        return 1
    ckpt = best.checkpoint.path if best.checkpoint else None
    print(f"done: {name}; last checkpoint: {ckpt}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
