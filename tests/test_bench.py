"""The benchmark scripts run and print the figures their docs promise (small sizes: not a timing test)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
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


def test_env_throughput_breaks_a_step_into_phases_that_add_up():
    out = run_json(
        ROOT / "bench/env_throughput.py", "--exp", "ppo", "--steps", "40", "--warmup", "5", "--json"
    )
    assert out["vehicles"] == 30 and out["packed"] is True and out["steps"] == 40
    # Three untimed passes by default, fastest first; the figure is the median pass's.
    passes = out["env_steps_per_s_passes"]
    assert len(passes) == 3 and passes == sorted(passes, reverse=True)
    assert round(out["env_steps_per_s"], 1) == passes[1]
    phases = out["us_per_step"]
    assert set(phases) == {"tick", "bev", "sensors", "driving", "experiment", "metrics", "reset", "env_other"}
    assert min(phases["tick"], phases["bev"], phases["driving"]) > 0
    assert sum(phases.values()) == pytest.approx(out["us_per_step_total_timed"], rel=0.01)
    assert out["ceiling_per_s"] < min(out["tick_per_s"], out["bev_per_s"])


def test_env_throughput_runs_the_env_in_n_pinned_processes_at_once():
    out = run_json(
        ROOT / "bench/env_throughput.py",
        "--exp",
        "ppo",
        "--steps",
        "40",
        "--warmup",
        "5",
        "--processes",
        "1,2",
        "--json",
    )
    one, two = out["processes"]
    assert (one["processes"], two["processes"]) == (1, 2) and one["efficiency_vs_linear"] == 1.0
    assert two["total_per_s"] == pytest.approx(2 * two["mean_per_s"], rel=0.01)
    assert two["efficiency_vs_linear"] == pytest.approx(two["mean_per_s"] / one["mean_per_s"], abs=0.001)
    bad = subprocess.run(
        [sys.executable, ROOT / "bench/env_throughput.py", "--processes", "1,x"],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2
    assert "--processes: '1,x': give process counts as positive integers, e.g. 1,14,16" in bad.stderr
    bad = subprocess.run(
        [sys.executable, ROOT / "bench/env_throughput.py", "--repeats", "0"], capture_output=True, text=True
    )
    assert bad.returncode == 2 and "--repeats: '0': give a positive whole number" in bad.stderr


def test_sampling_throughput_stock_connectors_picks_rllibs_pipelines():
    """--stock-connectors (the before of an A/B): the runners are StockConnectorsEnvRunner, not the lean
    CarlaEnvRunner (tests/test_lean_connectors.py checks both sample the same episodes)."""
    from bench.sampling_throughput import runner_config
    from carla_env.config import load_config
    from carla_env.rllib.env_runner import CarlaEnvRunner, StockConnectorsEnvRunner

    config = load_config(ROOT / "experiments/ppo/config.yaml", {"simulator": {"backend": "embedded"}})
    assert runner_config(config, 2, 4, 0.0, stock=True).env_runner_cls is StockConnectorsEnvRunner
    lean = runner_config(config, 2, 4, 0.0, stock=False)
    assert lean.env_runner_cls is CarlaEnvRunner and (lean.num_env_runners, lean.num_envs_per_env_runner) == (
        2,
        4,
    )


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
        "--envs-per-runner",
        "2",
        "--steps-per-call",
        "20",
        "--ceiling-steps",
        "100",
        "--json",
        timeout=900,
    )
    (row,) = out["rows"]
    assert row["runners"] == 1 and row["envs_per_runner"] == 2 and row["efficiency_vs_linear"] == 1.0
    assert row["env_steps"] >= 40  # 20 steps for each of the runner's 2 envs
    assert out["env_ceiling_per_s"] > 0
    assert row["per_runner_fraction_of_ceiling"] == pytest.approx(
        row["per_runner_steps_per_s"] / out["env_ceiling_per_s"], abs=0.01
    )


def test_learning_bench_scores_the_baselines_and_writes_the_report(tmp_path):
    """Evaluation and report phases on 2 episodes: the autopilot drives its routes cleanly, random does not."""
    proc = subprocess.run(
        [sys.executable, "bench/learning.py", "--phases", "eval,report", "--algos", "", "--eval-episodes", "2",
         "--out", tmp_path, "--runs", tmp_path / "runs"],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "learning.json").read_text())
    autopilot, random = results["evaluation"]["autopilot"], results["evaluation"]["random"]
    assert autopilot["episodes"] == random["episodes"] == 2
    assert autopilot["route_completion"] > 0.9 and autopilot["collisions_per_km"] == 0.0
    assert autopilot["lane_invasions_per_km"] <= 1.0  # the reference meets the targets it is compared to
    assert random["route_completion"] < 0.5
    rows = {line.split(" | ")[0]: line for line in (tmp_path / "results.md").read_text().splitlines()}
    assert rows["| autopilot"].endswith("| yes |") and rows["| random"].endswith("| no |")  # targets met
    assert (tmp_path / "learning_curve.png").stat().st_size > 0


def assert_missing_module_refused(proc, path):
    """Exit 2 and train.py's one line naming the path and what to give instead."""
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"--init-module: no policy module under {path}; give a checkpoint folder "
        "(a run's checkpoint_N, or bench/imitation.py's)"
    ]


def test_learning_bench_rejects_an_unknown_phase_and_a_missing_init_module(tmp_path):
    proc = subprocess.run(
        [sys.executable, "bench/learning.py", "--phases", "trian"], capture_output=True, text=True, cwd=ROOT
    )
    assert proc.returncode == 2 and "--phases: unknown ['trian']" in proc.stderr
    proc = subprocess.run(
        [sys.executable, "bench/learning.py", "--phases", "train", "--algos", "ppo", "--init-module",
         tmp_path / "nope", "--runs", tmp_path / "runs", "--out", tmp_path / "out"],
        capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    assert_missing_module_refused(proc, tmp_path / "nope")
    assert not (tmp_path / "runs").exists()
    proc = subprocess.run(
        [sys.executable, "bench/learning.py", "--phases", "train", "--algos", "ppo", "--tag", "shaped",
         "--reward-options", '{"speeding_penalt": 0.05}', "--runs", tmp_path / "runs", "--out", tmp_path / "out"],
        capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert line.endswith("experiment.options.speeding_penalt: unknown key; did you mean 'speeding_penalty'?")
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_learning_bench_training_resumes_across_calls(tmp_path):
    """Two calls of the train phase: the second continues the first's curve from its checkpoint."""
    args = [sys.executable, "bench/learning.py", "--phases", "train", "--algos", "ppo", "--runners", "1",
            "--train-batch", "256", "--out", tmp_path, "--runs", tmp_path / "runs"]  # fmt: skip
    for budget in (["--minutes", "0.01"], ["--minutes", "10", "--call-minutes", "0"]):
        proc = subprocess.run(
            [*map(str, args), *budget], capture_output=True, text=True, timeout=600, cwd=ROOT
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
    curve = json.loads((tmp_path / "runs/ppo/state.json").read_text())["curve"]
    assert [row["iteration"] for row in curve] == list(range(1, len(curve) + 1)) and len(curve) >= 2
    assert curve[-1]["env_steps"] > curve[0]["env_steps"]


def test_imitation_bench_clones_the_autopilot_into_a_module_infer_can_load(tmp_path):
    """A tiny run end to end: demonstrations, a fit that lowers the loss, a DAgger round in which the
    cloned policy drives and the autopilot labels, a checkpoint tree that ModulePolicy loads, and the
    held-out evaluation in one JSON line."""
    proc = subprocess.run(
        [sys.executable, "bench/imitation.py", "--samples", "512", "--epochs", "3", "--eval-episodes", "1",
         "--dagger-rounds", "1", "--dagger-samples", "256", "--workers", "2", "--ego-history", "--out", tmp_path],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["samples"] == 512 + 256 and result["episodes"] == 1 and result["ego_history"] is True
    cloned, dagger = result["rounds"]
    assert (cloned["samples"], dagger["samples"]) == (512, 768)
    first, _, last = cloned["loss_per_epoch"]
    assert last < first
    assert "rollout_route_completion" in cloned  # how far the cloned policy drove in its round
    assert Path(result["checkpoint"]).parent.name == "ego_history_dagger"
    from carla_env.rllib.policy import ModulePolicy

    policy = ModulePolicy.from_checkpoint(Path(result["checkpoint"]))
    assert policy(np.zeros(policy.observation_space.shape, np.uint8)).shape == (2,)
    # A later call continues from that module (a long run split across time-limited calls).
    proc = subprocess.run(
        [sys.executable, "bench/imitation.py", "--samples", "256", "--epochs", "1", "--eval-episodes", "0",
         "--workers", "2", "--ego-history", "--init-module", result["checkpoint"], "--lr", "1e-5",
         "--out", tmp_path / "more"],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    more = json.loads(proc.stdout.strip().splitlines()[-1])
    assert more["init_module"] == result["checkpoint"] and more["episodes"] == 0  # evaluation skipped
    first_loss = more["loss_per_epoch"][0]
    # It starts from the trained weights, not afresh (a small lr: Adam's first steps jolt a fitted net).
    assert first_loss < 0.7 * cloned["loss_per_epoch"][0]


def test_imitation_bench_refuses_bad_dagger_settings(tmp_path):
    proc = subprocess.run(
        [sys.executable, "bench/imitation.py", "--dagger-rounds", "1", "--beta", "1.5"],
        capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 2 and "--beta: a probability in [0, 1]" in proc.stderr
    proc = subprocess.run(
        [sys.executable, "bench/imitation.py", "--init-module", tmp_path / "nope", "--out", tmp_path / "out"],
        capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    assert_missing_module_refused(proc, tmp_path / "nope")
    assert not (tmp_path / "out").exists()


def test_imitation_bench_refuses_too_few_samples():
    proc = subprocess.run(
        [sys.executable, "bench/imitation.py", "--samples", "10"], capture_output=True, text=True, cwd=ROOT
    )
    assert proc.returncode == 2 and "--samples: at least 256" in proc.stderr


@pytest.mark.timeout(600)
def test_training_throughput_compares_replay_types_and_profiles_an_update(tmp_path):
    from tests.test_train import tiny_config

    config = tiny_config(tmp_path)
    out = run_json(
        ROOT / "bench/training_throughput.py",
        "--config", config, "--replay", "PrioritizedEpisodeReplayBuffer,TransitionReplay",
        "--warmup", "1", "--iterations", "1", "--json",
    )  # fmt: skip
    assert [r["replay"] for r in out["rows"]] == ["PrioritizedEpisodeReplayBuffer", "TransitionReplay"]
    assert [r["algorithm"] for r in out["rows"]] == ["DQN", "ArrayReplayDQN"]
    for row in out["rows"]:
        assert row["env_steps"] >= 150 and row["env_steps_per_s"] > 0
        assert (
            row["timers_s"]["learner_update_timer"] > 0
            and row["timers_s"]["replay_buffer_sampling_timer"] > 0
        )
    assert out["rows"][0]["speedup"] == 1.0
    assert out["rows"][1]["speedup"] == round(
        out["rows"][1]["env_steps_per_s"] / out["rows"][0]["env_steps_per_s"], 2
    )
    profile = run_json(
        ROOT / "bench/training_throughput.py", "--config", config, "--update-profile", "5", "--json"
    )
    assert profile["batch"] == 8 and profile["device"] == "cpu" and profile["ms_per_update"] > 0
    assert profile["replay_transitions"] > 0
    own = profile["ms_per_update_by_own_time"]
    assert len(own) == 15 and all(ms >= 0 for ms in own.values())
    assert any("run_backward" in name for name in own)  # each update ran the learner's backward pass


def test_training_throughput_bad_input_is_one_line_and_exit_2():
    proc = subprocess.run(
        [sys.executable, "bench/training_throughput.py", "--exp", "nope"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert "experiments/nope/config.yaml" in line and "not found" in line
