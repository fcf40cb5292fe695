"""How long are the routes the env plans? The distribution of `route_length` over reset seeds, per town.

    python bench/route_lengths.py                                   # GridTown01, the held-out town, ../shared/maps
    python bench/route_lengths.py --towns GridTown01 --route-length 5000 --seeds 60 --json

Each town runs the PPO experiment's env (embedded backend, no traffic: routes do not depend on it)
and resets it with seeds first_seed.. (the held-out town uses the evaluation's seeds, 10000 on).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from carla_env.evaluate import HELD_OUT_TOWN  # noqa: E402

SHARED_MAPS = ROOT.parent / "shared" / "maps"


def route_lengths(town: str, route_length: float, seeds: range) -> list[float]:
    from carla_env.config import load_config
    from carla_env.env import CarlaEnv

    config = load_config(
        ROOT / "experiments/ppo/config.yaml",
        {
            "simulator": {"backend": "embedded", "town": town, "traffic": {"vehicles": 0}},
            "experiment": {"route_length": route_length},
        },
    )
    env = CarlaEnv(config)
    lengths = []
    for seed in seeds:
        env.reset(seed=seed)
        lengths.append(env.experiment.route.length)
    env.close()
    return lengths


def summary(lengths: list[float], asked: float) -> dict:
    x = np.array(lengths)
    return {
        "min": round(float(x.min()), 1),
        "p10": round(float(np.percentile(x, 10)), 1),
        "median": round(float(np.median(x)), 1),
        "max": round(float(x.max()), 1),
        "outside_10pct": int((abs(x - asked) > 0.1 * asked).sum()),
        "under_50pct": int((x < 0.5 * asked).sum()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--towns", nargs="*", help="default: GridTown01, the held-out town, ../shared/maps/*.xodr"
    )
    parser.add_argument("--route-length", type=float, default=250.0)
    parser.add_argument("--seeds", type=int, default=60)
    parser.add_argument("--json", action="store_true", help="one JSON line instead of a table")
    args = parser.parse_args()
    towns = args.towns or ["GridTown01", HELD_OUT_TOWN, *map(str, sorted(SHARED_MAPS.glob("*.xodr")))]
    out = {}
    for town in towns:
        first = 10_000 if town == HELD_OUT_TOWN else 0
        lengths = route_lengths(town, args.route_length, range(first, first + args.seeds))
        out[town] = summary(lengths, args.route_length)
        if not args.json:
            print(f"{town}: {args.seeds} routes asked {args.route_length:g} m: {out[town]}", flush=True)
    if args.json:
        print(json.dumps(out))


if __name__ == "__main__":
    main()
