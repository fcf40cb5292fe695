"""The benchmark scripts run and print the figures their docs promise (small sizes: not a timing test)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_json(*args, timeout=600) -> dict:
    proc = subprocess.run(
        [sys.executable, *map(str, args)], capture_output=True, text=True, timeout=timeout, cwd=ROOT
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_sim_throughput_prints_both_simulators_and_their_ratio():
    out = run_json(
        ROOT / "bench/sim_throughput.py",
        "--town",
        "GridTown03",
        "--vehicles",
        "10",
        "--steps",
        "100",
        "--peer-steps",
        "10",
        "--json",
    )
    assert out["npcs"] == 10
    assert out["embedded_steps_per_s"] > 0 and out["highway_env_steps_per_s"] > 0
    assert out["ratio"] == pytest.approx(
        out["embedded_steps_per_s"] / out["highway_env_steps_per_s"], rel=0.01
    )


def test_bev_throughput_prints_rates_and_sizes():
    out = run_json(
        ROOT / "bench/bev_throughput.py", "--town", "GridTown03", "--vehicles", "10", "--obs", "20", "--json"
    )
    assert out["channels"] == 24 and out["raw_bytes"] == 24 * 192 * 192
    assert out["packed_bytes"] * 8 == out["raw_bytes"] and out["packed_fraction"] == 0.125
    assert min(out["obs_per_s"], out["obs_per_s_packed"], out["obs_per_s_with_scene_api"]) > 0


@pytest.mark.slow
def test_sampling_throughput_per_runner_count():
    out = run_json(
        ROOT / "bench/sampling_throughput.py",
        "--exp",
        "dqn",
        "--runners",
        "1",
        "--iterations",
        "1",
        "--json",
        timeout=900,
    )
    (row,) = out["rows"]
    assert row["runners"] == 1 and row["env_steps"] > 0 and row["efficiency_vs_linear"] == 1.0
