"""Train a driving agent with Ray RLlib (new API stack) under Ray Tune.

    python train.py experiments/dqn/config.yaml [--name N] [--dir D] [--restore | --overwrite]
                    [--address auto] [--num-env-runners K] [--stop-timesteps T] [--stop-iters I]
                    [--stop-minutes M]
                    [--init-module CHECKPOINT] [--profile auto|cpu|gpu|none] [--set KEY=VALUE ...]

Prints a progress line at least every `training.progress_seconds` with steps, rate and an ETA.
Checkpoints every `training.checkpoint_every` iterations, at the first iteration end
`training.checkpoint_minutes` after the last one, at the end, and on Ctrl-C (then exit 130);
`--restore` resumes an interrupted run (Ctrl-C or kill -9) from its last checkpoint; `--init-module`
starts a new run from another checkpoint's policy (e.g. a behaviour-cloned one). A run is locked while
it trains. Exit code 2 on bad input.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import logging
import os
import shutil
import sys
from pathlib import Path

from carla_env.rllib.algorithm import build_algo_config, has_gpu, init_ray, start_from_module
from carla_env.rllib.checkpoint import CONFIG_NAME, check_init_module, module_dir, save_config

ROOT = Path(__file__).resolve().parent


def load_run_config(path, overrides: dict, restoring: Path | None, profile: str = "auto"):
    """The run's config with its backend pinned (resolved once, saved with the run) and its hardware
    profile merged (`auto`: profiles.gpu with a CUDA GPU, else profiles.cpu, where the config has it);
    a resumed run keeps the config it was started with, so it runs on the same backend and profile.
    Returns (config, BackendChoice)."""
    from carla_env.backends import pin_backend
    from carla_env.compat import load_any_config
    from carla_env.config import apply_profile, load_config

    saved = restoring / CONFIG_NAME if restoring is not None else None
    if saved is not None and saved.is_file():
        config, choice = pin_backend(load_config(saved, overrides), str(saved))
        return config, dataclasses.replace(choice, reason="saved with the run")
    config, backend, original_layout = load_any_config(
        path, overrides
    )  # this project's layout or the original's
    if original_layout:
        print(original_layout)
    if profile == "auto":
        profile = "gpu" if has_gpu() else "cpu"
        profile = profile if profile in config.profiles else "none"
    config = apply_profile(config, None if profile == "none" else profile, str(path), overrides)
    return config, backend


class _OneLineParser(argparse.ArgumentParser):
    """A bad flag is one line naming the flag (argparse would print the whole usage first)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: {message} (--help lists the options)\n")


def _count(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"needs a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    return parse


def _minutes(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"needs a number of minutes, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _setting(text: str) -> tuple[str, dict]:
    """KEY=VALUE, KEY a dotted config path, VALUE read as YAML: (KEY, the nested override)."""
    import yaml

    key, eq, raw = text.partition("=")
    parts = key.split(".")
    if not eq or not all(p.strip() for p in parts):
        raise argparse.ArgumentTypeError(
            f"needs KEY=VALUE with a dotted config key, e.g. experiment.options.curve_speed_penalty=0.05; got {text!r}"
        )
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        raise argparse.ArgumentTypeError(f"{key}: the value {raw!r} is not valid YAML") from None
    for part in reversed(parts):
        value = {part.strip(): value}
    return key, value


def _blame_setting(key: str | None, keys: list[str]) -> str:
    """' (given by --set KEY)' when a config error's key is one --set gave, or lies on its path."""
    for given in keys if key else ():
        if given == key or given.startswith(key + ".") or key.startswith(given + "."):
            return f" (given by --set {given})"
    return ""


def _shared_key(a: dict, b: dict, prefix: str = "") -> str | None:
    """The first dotted key that both nested overrides set (one may set a whole mapping above it)."""
    for k in a.keys() & b.keys():
        if isinstance(a[k], dict) and isinstance(b[k], dict):
            found = _shared_key(a[k], b[k], f"{prefix}{k}.")
            if found:
                return found
        else:
            return f"{prefix}{k}"
    return None


def parse_args(argv):
    p = _OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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
    p.add_argument(
        "--profile",
        choices=("auto", "cpu", "gpu", "none"),
        default="auto",
        help="the config's hardware profile to merge (auto: gpu with a CUDA GPU, else cpu)",
    )
    p.add_argument("--num-env-runners", type=_count(0), metavar="K")
    p.add_argument("--stop-timesteps", type=_count(1), metavar="T")
    p.add_argument("--stop-iters", type=_count(1), metavar="I")
    p.add_argument("--stop-minutes", type=_minutes, metavar="M", help="training wall time")
    p.add_argument(
        "--set",
        type=_setting,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="one config value over the config and its profile, e.g. --set "
        "experiment.options.curve_speed_penalty=0.05 (repeatable; VALUE is read as YAML)",
    )
    return p.parse_args(argv)


# -- the first run, as a person meets it: missing experiment, the run lock, restore, the first line --


def missing_config_message(path: str) -> str:
    """A config path that does not exist (e.g. `make train EXP=typo`): name the experiments there are."""
    found = sorted(p.parent.name for p in (ROOT / "experiments").glob("*/config.yaml"))
    return (
        f"config file not found: {path}; the experiments are: {', '.join(found)} "
        "(make train EXP=NAME, or python train.py experiments/NAME/config.yaml)"
    )


def lock_run(storage: str, name: str):
    """Hold the run's lock for this process's life, or return None when another live train.py holds it.

    The lock file sits beside the run folder (not in it), so --overwrite can delete the folder while
    holding it. Runs on an s3:// storage are not locked (no shared file system to lock on)."""
    from filelock import FileLock, Timeout

    if "://" in storage:
        return contextlib.nullcontext()
    Path(storage).mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(Path(storage) / f".{name}.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return None
    return lock


def newest_checkpoint(run_dir: Path) -> Path | None:
    """The run's newest checkpoint folder: the one --restore continues from."""
    return max(run_dir.glob("*/checkpoint_*"), key=lambda p: p.stat().st_mtime, default=None)


def cut_off_experiment_state(run_dir: Path) -> Path | None:
    """The run's newest Tune experiment state when it does not parse, else None. Ray 2.60 rewrites it
    in place after every result (not atomically), so a kill -9 mid-write leaves it cut off; Tune's
    restore then starts the trial again from iteration 1, in a new folder, without a word."""
    import json

    states = sorted(run_dir.glob("experiment_state-*.json"))
    if not states:
        return None
    try:
        json.loads(states[-1].read_text())
    except ValueError:
        return states[-1]
    return None


def reached_its_stop(run_dir: Path) -> bool:
    """Tune marks the result that met the run's stop `done`; restoring such a run trains nothing."""
    import json

    newest = newest_checkpoint(run_dir)
    if newest is None:
        return False
    try:
        with open(newest.parent / "result.json", "rb") as f:  # only its last line (the file grows all run)
            f.seek(max(0, f.seek(0, 2) - 65536))
            last = f.read().decode(errors="replace").strip().splitlines()[-1]
        return bool(json.loads(last).get("done"))
    except (OSError, ValueError, IndexError):
        return False


def first_line(config, backend, name: str, storage: str) -> str:
    """Backend (pinned, and why), device, where results and TensorBoard files go: the first thing a run prints."""
    if has_gpu():
        import torch

        device = f"learner on GPU ({torch.cuda.get_device_name(0)})"
    else:
        device = "learner on CPU (no CUDA GPU)"
    if config.profile:
        device += f", {config.profile.upper()} profile (profiles.{config.profile} of the config)"
    where = f"{storage}/{name}"
    if "://" not in storage and Path(where).is_relative_to(Path.cwd()):
        where = os.path.relpath(where)
    return (
        f"train {name}: {config.training.algorithm} on the {backend.name} backend ({backend.reason}); {device}; "
        f"results in {where}; watch with: tensorboard --logdir {where}"
    )


def install_interrupt_handler() -> None:
    """First Ctrl-C: checkpoint at the end of the current iteration, then stop (exit 130).
    Second: stop now, without that checkpoint (Tune's own graceful end, which saves the run state)."""
    import signal

    from carla_env.rllib.progress import stop_requested

    def on_sigint(signum, frame):
        if not stop_requested.is_set():
            stop_requested.set()
            print(
                "\nCtrl-C: writing a checkpoint when the current iteration ends, then stopping "
                "(Ctrl-C again to stop now without it)",
                file=sys.stderr,
                flush=True,
            )
        else:
            signal.signal(signal.SIGINT, signal.default_int_handler)  # a third one interrupts outright
            os.kill(os.getpid(), signal.SIGUSR1)

    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    signal.signal(signal.SIGINT, on_sigint)


def main(argv=None) -> int:
    args = parse_args(argv)
    from carla_env.config import ConfigError, deep_merge

    if not Path(args.config).exists():
        print(missing_config_message(args.config), file=sys.stderr)
        return 2
    if args.restore and args.set:
        print("--restore continues a run with the config it was started with; drop --set", file=sys.stderr)
        return 2
    flags: dict = {}
    if args.num_env_runners is not None:
        flags.setdefault("training", {})["num_env_runners"] = args.num_env_runners
    # Stops given here replace the config's (a --stop-iters 2 smoke run is not cut by its minutes).
    stop = {"timesteps": args.stop_timesteps, "iterations": args.stop_iters, "minutes": args.stop_minutes}
    if any(v is not None for v in stop.values()):
        flags.setdefault("training", {})["stop"] = stop
    settings: dict = {}
    for _, setting in args.set:
        settings = deep_merge(settings, setting)
    both = _shared_key(settings, flags)
    if both:
        print(f"--set and a flag both set {both}: give it once", file=sys.stderr)
        return 2
    overrides = deep_merge(settings, flags)
    name = args.name or Path(args.config).resolve().parent.name
    storage = args.dir if "://" in args.dir else str(Path(args.dir).resolve())
    run_dir = Path(storage) / name if "://" not in storage else None
    try:
        config, backend = load_run_config(
            args.config, overrides, run_dir if args.restore else None, args.profile
        )
    except ConfigError as e:
        print(f"{e}{_blame_setting(e.key, [key for key, _ in args.set])}", file=sys.stderr)
        return 2
    if not config.experiment.type:
        print(
            f"config error in {args.config}: experiment.type: training needs an experiment class "
            "('module:Class', e.g. experiments.dqn.experiment:DQNExperiment)",
            file=sys.stderr,
        )
        return 2
    if args.restore and args.profile != "auto":
        print(
            "--restore continues a run with the profile it was started with; drop --profile", file=sys.stderr
        )
        return 2
    if args.restore and (args.stop_timesteps or args.stop_iters or args.stop_minutes):
        print(
            "--restore continues a run to the stop it was started with; drop --stop-timesteps/--stop-iters/"
            "--stop-minutes (to train a finished run further: a new --name with --init-module <its checkpoint>)",
            file=sys.stderr,
        )
        return 2
    cpus = os.cpu_count() or 1
    if not args.address and config.training.num_env_runners >= cpus:
        # Ray would wait for CPUs this machine does not have, with no word: the profile's runner count
        # (profiles.gpu: 14) is for a 16-CPU machine.
        print(
            f"training.num_env_runners: {config.training.num_env_runners} env runners need a CPU each plus one "
            f"for the learner; this machine has {cpus}: pass --num-env-runners {cpus - 1} or fewer",
            file=sys.stderr,
        )
        return 2
    if args.restore and args.init_module:
        print(
            "--init-module starts a run; --restore continues one from its own weights: drop one",
            file=sys.stderr,
        )
        return 2
    if run_dir is not None and run_dir.exists() and not (args.restore or args.overwrite):
        print(
            f"run {run_dir} exists; pass --restore to resume it or --overwrite to start afresh",
            file=sys.stderr,
        )
        return 2
    if args.restore and run_dir is not None and not run_dir.exists():
        print(f"--restore: no run at {run_dir}; drop --restore to start one", file=sys.stderr)
        return 2
    if args.restore and run_dir is not None and newest_checkpoint(run_dir) is None:
        print(
            f"--restore: run {run_dir} has no checkpoint yet, nothing to resume; "
            "start it afresh with --overwrite",
            file=sys.stderr,
        )
        return 2
    cut_off = cut_off_experiment_state(run_dir) if args.restore and run_dir is not None else None
    if cut_off is not None:
        newest = newest_checkpoint(run_dir)
        print(
            f"--restore: {cut_off} was cut off (the run was killed while Tune wrote it), so Tune would "
            f"start the run over; continue from its newest checkpoint as a new run: --init-module {newest} "
            "--name NEW_NAME",
            file=sys.stderr,
        )
        return 2
    if args.restore and run_dir is not None and reached_its_stop(run_dir):
        newest = newest_checkpoint(run_dir)
        print(
            f"done: {name} had already reached its stop; last checkpoint: {newest}; to train it further: "
            f"python train.py {args.config} --name NEW_NAME --init-module {newest} [--stop-minutes M]"
        )
        return 0
    if args.init_module:
        try:
            check_init_module(args.init_module, config)
        except ConfigError as e:
            print(e, file=sys.stderr)
            return 2
    try:
        algo_config = build_algo_config(config)  # before anything is written: a config error leaves no run
    except ConfigError as e:
        print(e, file=sys.stderr)
        return 2
    lock = lock_run(storage, name)  # held until this process exits
    if lock is None:
        print(
            f"run {run_dir} is in use by another train.py that is still running; "
            "stop it first (Ctrl-C there) or pick another --name",
            file=sys.stderr,
        )
        return 2
    if args.overwrite and run_dir is not None and run_dir.exists():
        shutil.rmtree(run_dir)
    if run_dir is not None and not args.restore:
        save_config(config, run_dir / CONFIG_NAME)
    return fit(args, config, backend, algo_config, name, storage, run_dir)


def fit(args, config, backend, algo_config, name: str, storage: str, run_dir: Path | None) -> int:
    """Run (or resume) the Tune experiment; 0 when it reached its stop, 130 after Ctrl-C, 1 on failure."""
    print(first_line(config, backend, name, storage), flush=True)
    # Snapshot the experiment state after every result (not on Tune's timer), so a kill -9 loses at
    # most one checkpoint interval: restore then finds the newest checkpoint.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "0")
    # Tune's own console output would print a TensorBoard path in /tmp/ray; first_line has the right one.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # Its warnings on a stop name Tuner.restore and a second Ctrl-C; this script says what to run instead.
    logging.getLogger("ray.tune.tune").setLevel(logging.ERROR)
    from ray import tune

    from carla_env.rllib.progress import ProgressReporter, count_env_step, stop_requested

    if args.init_module:
        algo_config = algo_config.callbacks(
            on_algorithm_init=functools.partial(start_from_module, str(module_dir(args.init_module)))
        )
    algo_config = algo_config.callbacks(on_episode_step=count_env_step)
    init_ray(ROOT, args.address)
    install_interrupt_handler()
    tr = config.training
    stop = {}
    if tr.stop.timesteps:
        stop["num_env_steps_sampled_lifetime"] = tr.stop.timesteps
    if tr.stop.iterations:
        stop["training_iteration"] = tr.stop.iterations
    if tr.stop.minutes:
        stop["time_total_s"] = tr.stop.minutes * 60  # kept in the checkpoint: a restored run continues it
    reporter = ProgressReporter(
        tr.stop.timesteps, tr.stop.iterations, tr.progress_seconds, tr.checkpoint_minutes, tr.stop.minutes
    )
    run_config = tune.RunConfig(
        name=name,
        storage_path=storage,
        stop=stop,
        verbose=0,
        callbacks=[reporter],
        checkpoint_config=tune.CheckpointConfig(
            checkpoint_frequency=tr.checkpoint_every, checkpoint_at_end=True, num_to_keep=tr.keep_checkpoints
        ),
        failure_config=tune.FailureConfig(max_failures=0),
    )
    if args.restore:
        tuner = tune.Tuner.restore(
            str(run_dir) if run_dir else f"{storage}/{name}",
            trainable=algo_config.algo_class,
            resume_errored=True,
            param_space=algo_config,
        )
    else:
        # The class, not its name: Tune resolves a name by importing every RLlib algorithm, and
        # DreamerV3's debug module then makes and resets a CartPole whose float64 observation
        # gymnasium reports as "not within the observation space" (not our env's).
        tuner = tune.Tuner(algo_config.algo_class, param_space=algo_config, run_config=run_config)
    results = tuner.fit()
    best = results[0]
    if stop_requested.is_set() or (not best.error and not best.metrics.get("done", False)):
        if best.checkpoint is None:
            print(
                f"stopped: {name}; no checkpoint was written (start afresh with --overwrite)", file=sys.stderr
            )
        else:
            resume = f"python train.py {args.config} --name {name} --dir {args.dir} --restore"
            print(
                f"stopped: {name}; last checkpoint: {best.checkpoint.path}; resume with: {resume}",
                file=sys.stderr,
            )
        return 130
    if best.error:
        print(f"training failed: {best.error}", file=sys.stderr)
        return 1
    ckpt = best.checkpoint.path if best.checkpoint else None
    print(f"done: {name}; last checkpoint: {ckpt}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
