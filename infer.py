"""Drive a trained checkpoint: greedy episodes, a metrics table, a JSON summary, a BEV video.

    python infer.py CHECKPOINT [--config CONFIG] [--episodes N] [--video out.mp4] [--json out.json]

CHECKPOINT is a checkpoint folder of train.py (runs/<name>/<trial>/checkpoint_NNNNNN) or a run folder
(its newest checkpoint is used). Only the torch RLModule is loaded: no Ray runtime is started.
Episodes run through `carla_env.evaluate` (which also scores several towns in parallel).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", type=Path)
    p.add_argument("--config", type=Path, help="experiment config (default: the one saved with the run)")
    p.add_argument("--episodes", type=int, default=5)
    p.add_argument("--video", type=Path, help="write the BEV of every episode to this .mp4")
    p.add_argument("--json", type=Path, help="write the summary (per episode and mean) to this file")
    p.add_argument("--seed", type=int, default=1000, help="first episode's seed (training used others)")
    args = p.parse_args(argv)
    if args.episodes < 1:
        print("--episodes must be >= 1", file=sys.stderr)
        return 2
    if args.video is not None and args.video.suffix.lower() != ".mp4":
        print(f"--video {args.video}: give an .mp4 path", file=sys.stderr)
        return 2

    from carla_env.config import ConfigError, load_config
    from carla_env.env import CarlaEnv
    from carla_env.evaluate import CheckpointPolicy, EvaluationError, run_episode
    from carla_env.rllib.checkpoint import CheckpointError, find_config, resolve_checkpoint

    try:
        checkpoint = resolve_checkpoint(args.checkpoint)
        config = load_config(args.config or find_config(checkpoint))
        env = CarlaEnv(config)
        policy = CheckpointPolicy(env, checkpoint)
    except (CheckpointError, ConfigError, EvaluationError) as e:
        print(e, file=sys.stderr)
        return 2

    from tqdm import tqdm

    from carla_env.metrics import DrivingMetrics
    from carla_env.video import Mp4Writer

    writer = Mp4Writer(args.video, 1.0 / config.simulator.timestep) if args.video is not None else None

    def record(env, obs, info) -> None:
        frame = env.render()
        if frame is not None:
            writer.write(frame)

    try:
        episodes = [
            run_episode(env, policy, args.seed + k, on_step=record if args.video is not None else None)
            for k in tqdm(range(args.episodes), desc="episodes", unit="ep")
        ]
    finally:
        env.close()
        if writer is not None:
            writer.close()
    keys = ["return", *DrivingMetrics().summary()]
    mean = {key: float(np.mean([e.get(key, np.nan) for e in episodes])) for key in keys}
    town = env.simulator_config.town  # a config's town list: the first, as env runner 0 drives it
    print(
        f"\ncheckpoint: {checkpoint}\ntown: {town}, {config.simulator.traffic.vehicles} vehicles, "
        f"{config.simulator.carla.walkers} walkers\n"
        + "".join(f"{key:>30}  {mean[key]:10.3f}\n" for key in keys)
    )
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {"checkpoint": str(checkpoint), "town": town, "mean": mean, "episodes": episodes}, indent=2
            )
        )
    video = args.video if writer is not None and writer.frames else None
    written = [str(p) for p in (video, args.json) if p is not None]
    if written:
        print("wrote " + ", ".join(written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
