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

from carla_env.rllib.algorithm import build_algo_config, init_ray, start_from_module
from carla_env.rllib.checkpoint import CONFIG_NAME, check_init_module, module_dir, save_config

ROOT = Path(__file__).resolve().parent


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


def main(argv=None) -> int:
    args = parse_args(argv)
    from carla_env.config import ConfigError, load_config

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
    try:
        config = load_config(args.config, overrides)
    except ConfigError as e:
        print(e, file=sys.stderr)
        return 2
    name = args.name or Path(args.config).resolve().parent.name
    storage = args.dir if "://" in args.dir else str(Path(args.dir).resolve())
    run_dir = Path(storage) / name if "://" not in storage else None
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
    init_ray(ROOT, args.address)
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
