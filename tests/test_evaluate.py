"""`python -m carla_env.evaluate` as a user runs it: autopilot, random and a checkpoint scored per town and
overall, the same figures with one or two workers, and bad input refused with one line (exit 2).
Small towns, few vehicles and short episodes keep it fast."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from carla_env.evaluate import evaluate, split_towns

ROOT = Path(__file__).resolve().parents[1]
SMALL_TOWNS = ["GridTown03", "grid:seed=7,columns=3,rows=3"]
TINY_BEV = {
    "type": "sensor.birdview",
    "packed": True,
    "size": 48,
    "pixels_per_meter": 2.0,
    "ego_offset": 10,
}


def small_config(tmp_path, exp: str = "ppo", name: str = "small.yaml", **experiment) -> Path:
    """experiments/<exp>/config.yaml with 5 vehicles, a short route and short episodes."""
    config = yaml.safe_load((ROOT / f"experiments/{exp}/config.yaml").read_text())
    config["simulator"].update(backend="embedded", town="GridTown03", traffic={"vehicles": 5})
    config["experiment"].update({"route_length": 40, "max_steps": 250, **experiment})
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config))
    return path


def run_evaluate(*args, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "carla_env.evaluate", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


def test_towns_split_on_commas_but_keep_a_generated_towns_parameters():
    assert split_towns("GridTown03, grid:seed=7,columns=3,rows=3,Town01") == [
        "GridTown03",
        "grid:seed=7,columns=3,rows=3",
        "Town01",
    ]


def test_autopilot_on_two_towns_in_two_workers_scores_like_one_worker(tmp_path):
    cfg, out = small_config(tmp_path, max_steps=600), tmp_path / "autopilot.json"  # time for red lights
    proc = run_evaluate("--policy", "autopilot", "--config", cfg, "--towns", ",".join(SMALL_TOWNS),
                        "--episodes", 2, "--seed", 5, "--workers", 2, "--json", out)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert list(result["towns"]) == SMALL_TOWNS and result["seeds"] == [5, 6]
    assert [(r["town"], r["seed"]) for r in result["episodes"]] == [
        (t, s) for t in SMALL_TOWNS for s in (5, 6)
    ]
    overall = result["overall"]
    assert overall["episodes"] == 4 and sum(t["episodes"] for t in result["towns"].values()) == 4
    # The reference drives its short routes without a collision or a crossed marking.
    assert overall["route_completion"] > 0.9 and overall["collisions_per_km"] == 0.0
    assert overall["lane_invasions_per_km"] == 0.0 and overall["mean_speed"] > 1.0
    km = sum(r["distance_m"] for r in result["episodes"]) / 1000
    assert overall["km_driven"] == pytest.approx(km)
    lines = proc.stdout.splitlines()
    assert lines[0] == "policy: autopilot" and [line.split()[0] for line in lines[2:-1]] == [
        *SMALL_TOWNS,
        "overall",
    ]
    assert lines[-1].startswith("targets (") and lines[-1].endswith("met on every town")
    # Episodes are seeded, not scheduled: one worker in this process drives the very same episodes.
    from carla_env.config import load_config

    again = evaluate(load_config(cfg), "autopilot", [5, 6], SMALL_TOWNS, workers=1)
    assert again["episodes"] == result["episodes"]


def test_random_policy_is_seeded_and_drives_discrete_actions_worse_than_the_autopilot(tmp_path):
    from carla_env.config import load_config

    dqn = load_config(small_config(tmp_path, "dqn", max_steps=60))
    first, second = (evaluate(dqn, "random", [3, 4]) for _ in range(2))
    assert first["episodes"] == second["episodes"]  # same seeds, same actions
    assert first["overall"]["episodes"] == 2 and first["overall"]["route_completion"] < 0.5
    # Uniformly drawn actions turn the wheel back and forth; the autopilot steers smoothly.
    autopilot = evaluate(load_config(small_config(tmp_path, "ppo", max_steps=400)), "autopilot", [3, 4])
    smooth = autopilot["overall"]["steer_change_per_s"]
    assert 0.0 < smooth < 0.1 and first["overall"]["steer_change_per_s"] > 1.0, smooth
    proc = run_evaluate("--policy", "random", "--config", small_config(tmp_path, "dqn", max_steps=60),
                        "--episodes", 1, "--seed", 3)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.splitlines()[-2].split()[:2] == ["overall", "1"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """An untrained PPO module saved as train.py saves one, with the config beside the run."""
    from carla_env.config import load_config
    from carla_env.env import CarlaEnv
    from carla_env.rllib.algorithm import build_algo_config
    from carla_env.rllib.checkpoint import CONFIG_NAME, module_dir, save_config

    tmp = tmp_path_factory.mktemp("run")
    config = load_config(small_config(tmp, sensors={"birdview": TINY_BEV}, max_steps=40))
    config = config.model_copy(
        update={
            "training": config.training.model_copy(
                update={
                    "model": {"conv_filters": [[8, [4, 4], 4], [16, [3, 3], 2]], "head_fcnet_hiddens": [32]}
                }
            )
        }  # fmt: skip
    )
    module = build_algo_config(config).get_rl_module_spec(env=CarlaEnv(config)).build()
    path = tmp / "run" / "trial" / "checkpoint_000000"
    module.save_to_path(str(module_dir(path)))
    save_config(config, tmp / "run" / CONFIG_NAME)
    return path


def test_a_checkpoint_is_scored_with_the_config_saved_beside_its_run(checkpoint, tmp_path):
    out = tmp_path / "ckpt.json"
    proc = run_evaluate("--policy", checkpoint.parents[1], "--episodes", 1, "--json", out)  # the run folder
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["policy"] == str(checkpoint)  # its newest checkpoint
    (episode,) = result["episodes"]
    assert episode["town"] == "GridTown03" and 0 < episode["steps"] <= 40


def test_infer_drives_a_checkpoint_without_ray_and_writes_table_json_and_video(checkpoint, tmp_path):
    video, summary = tmp_path / "out.mp4", tmp_path / "out.json"
    proc = subprocess.run(
        [sys.executable, "infer.py", checkpoint, "--episodes", "2", "--video", video, "--json", summary],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"checkpoint: {checkpoint}" in proc.stdout and "route_completion" in proc.stdout
    result = json.loads(summary.read_text())
    assert [e["seed"] for e in result["episodes"]] == [1000, 1001]
    assert result["mean"]["return"] == pytest.approx(np.mean([e["return"] for e in result["episodes"]]))
    import cv2

    capture = cv2.VideoCapture(str(video))
    ok, frame = capture.read()
    assert ok and frame.shape == (384, 384, 3) and frame.any()  # the 48 px BEV, 8x by whole pixels
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == sum(e["steps"] for e in result["episodes"])


def one_line_refusal(returncode: int, stderr: str, *fragments) -> str:
    assert returncode == 2, stderr[-3000:]
    (line,) = stderr.strip().splitlines()
    assert all(f in line for f in fragments), line
    return line


def test_bad_input_is_refused_with_one_line_and_writes_nothing(checkpoint, tmp_path, capsys):
    from carla_env.evaluate import main

    ppo, out = small_config(tmp_path), tmp_path / "out.json"
    dqn = small_config(tmp_path, "dqn", name="dqn.yaml")
    other = small_config(tmp_path, name="other.yaml", sensors={"birdview": {**TINY_BEV, "size": 40}})
    cases = [
        (["--policy", "autopliot", "--config", ppo], ["--policy autopliot: not 'autopilot', 'random'"]),
        (["--policy", "autopilot", "--config", ppo, "--towns", "GridTown03,Nowhere"], ["simulator.town", "Nowhere"]),
        (["--policy", "random", "--config", ppo, "--episodez", 3], ["unrecognized arguments: --episodez"]),
    ]  # fmt: skip
    for args, fragments in cases:  # as the user runs it
        proc = run_evaluate(*args, "--json", out, timeout=120)
        one_line_refusal(proc.returncode, proc.stderr, *fragments)
    cases = [
        (["--policy", tmp_path / "nope", "--config", ppo], ["nope: not 'autopilot'", "checkpoint"]),
        (["--policy", tmp_path, "--config", ppo], ["no RLlib checkpoint with an RLModule under"]),
        (["--policy", "autopilot"], ["--policy autopilot needs --config"]),
        (["--policy", "autopilot", "--config", dqn], ["autopilot drives a continuous", "Discrete(15)"]),
        (["--policy", checkpoint, "--config", other], ["takes observations", "--config it was trained with"]),
        (["--policy", "random", "--config", ppo, "--episodes", 0], ["--episodes and --workers must be >= 1"]),
        (["--policy", "random", "--config", tmp_path / "missing.yaml"], ["config file not found"]),
        (["--policy", "random", "--config", ppo, "--max-steps", -1], ["experiment.max_steps"]),
        (["--policy", "random", "--config", ppo, "--failure-videos", ppo], ["--failure-videos", "give a folder"]),
        (["--policy", "random", "--config", ppo, "--failure-videos", ppo / "sub"], ["--failure-videos", "cannot write there"]),
        (["--policy", "random", "--config", ppo, "--failure-videos", "/proc/self"], ["--failure-videos", "cannot write there"]),
    ]  # fmt: skip
    for args, fragments in cases:  # the same main() in this process: no interpreter start per case
        returncode = main([*map(str, args), "--json", str(out)])
        one_line_refusal(returncode, capsys.readouterr().err, *fragments)
    assert not out.exists()


def test_each_parallel_job_has_its_own_env_slot(tmp_path):
    """On the CARLA backend a slot is a server's ports: two workers must never share one."""
    from carla_env.config import load_config
    from carla_env.evaluate import env_in_slot

    config = load_config(small_config(tmp_path))
    assert [env_in_slot(config, k).slot for k in range(3)] == [0, 1, 2]


def test_towns_all_scores_the_held_out_town_and_the_real_towns_found_and_names_the_missing(tmp_path):
    """--towns all takes the real towns from --maps (a link here: they are never copied), skips the
    absent ones with a line each, labels each town by name and says where the targets are met."""
    from tests.conftest import real_town_path

    maps = tmp_path / "maps"
    maps.mkdir()
    (maps / "Town02.xodr").symlink_to(real_town_path("Town02"))
    out = tmp_path / "all.json"
    proc = run_evaluate("--policy", "autopilot", "--config", small_config(tmp_path, max_steps=40),
                        "--towns", "all", "--maps", maps, "--episodes", 1, "--json", out)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ("Town01", "Town04", "Town10HD"):
        assert f"{name}: skipped: no {maps / name}.xodr and not in $CARLA_ROOT" in proc.stderr
    result = json.loads(out.read_text())
    assert list(result["towns"]) == ["grid:seed=101,columns=5,rows=5", "Town02"]
    # 40 steps (4 s) complete no 250 m route: every town misses the completion target, and says so.
    assert all("route completion >= 90%" in s["targets_missed"] for s in result["towns"].values())
    assert result["targets_met_on_every_town"] is False
    rows = {line.split()[0]: line.split() for line in proc.stdout.splitlines()[2:-1]}
    assert list(rows) == [*result["towns"], "overall"] and all(r[-1] == "missed" for r in rows.values())
    assert proc.stdout.splitlines()[-1].startswith("targets (route completion >= 90%") and (
        "missed on 2 of 2 towns" in proc.stdout.splitlines()[-1]
    )
    assert {"red_light_runs_per_km", "route_seconds"} <= set(result["overall"])
    assert result["towns"]["Town02"]["route_seconds"] == pytest.approx(4.0)


def test_failure_videos_show_each_episode_that_misses_a_target_and_only_those(tmp_path):
    import cv2

    from carla_env.config import load_config
    from carla_env.evaluate import episode_failures

    videos, out = tmp_path / "videos", tmp_path / "random.json"
    proc = run_evaluate("--policy", "random", "--config", small_config(tmp_path, "dqn", max_steps=60),
                        "--episodes", 2, "--seed", 3, "--workers", 2, "--failure-videos", videos, "--json", out)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    episodes = json.loads(out.read_text())["episodes"]
    assert all("incomplete" in episode_failures(r) for r in episodes)  # 60 random steps finish no route
    assert sorted(p.name for p in videos.iterdir()) == sorted(Path(r["video"]).name for r in episodes)
    for r in episodes:
        assert Path(r["video"]).name.startswith(f"GridTown03_{r['seed']}_") and "incomplete" in r["video"]
        capture = cv2.VideoCapture(r["video"])
        frames, width = capture.get(cv2.CAP_PROP_FRAME_COUNT), capture.get(cv2.CAP_PROP_FRAME_WIDTH)
        assert (frames, width >= 384) == (r["steps"], True)  # every step, scaled up to be watched
    assert proc.stdout.splitlines()[-1] == f"2 of 2 episodes missed a target: their videos are in {videos}"
    # Episodes that meet the targets leave no video.
    smooth = evaluate(load_config(small_config(tmp_path, max_steps=400)), "autopilot", [3, 4],
                      failure_videos=tmp_path / "autopilot")  # fmt: skip
    failed = [r for r in smooth["episodes"] if episode_failures(r)]
    assert len(failed) < 2 and [r.get("video") for r in smooth["episodes"] if "video" in r] == [
        r["video"] for r in failed
    ]


def test_steer_change_is_the_steer_travel_per_second_as_applied_and_summed_over_episodes(tmp_path):
    from carla_env.config import load_config
    from carla_env.env import CarlaEnv
    from carla_env.evaluate import summarise

    env = CarlaEnv(load_config(small_config(tmp_path, max_steps=60)))
    env.reset(seed=3)
    changes = []
    for steer in (0.0, 1.0, -1.0, 3.0, 1.0):  # 3.0 is applied as full lock, 1.0; the first counts none
        *_, info = env.step([steer, 0.0])
        changes.append(env.experiment.driving_state.steer_change)
    env.close()
    assert changes == pytest.approx([0.0, 1.0, 2.0, 2.0, 0.0])
    assert info["steer_change"] == pytest.approx(1.0 + 2.0 + 2.0)
    assert info["steer_change_per_s"] == pytest.approx(5.0 / info["route_seconds"])
    base = {"route_completion": 1.0, "distance_m": 100.0, "collisions": 0.0, "lane_invasions": 0.0,
            "red_light_runs": 0.0, "driving_score": 1.0, "mean_speed": 5.0}  # fmt: skip
    rows = [
        {**base, "route_seconds": 10.0, "steer_change": 4.0},
        {**base, "route_seconds": 30.0, "steer_change": 4.0},
    ]
    assert summarise(rows)["steer_change_per_s"] == pytest.approx(8.0 / 40.0)  # over all the time driven


def test_the_targets_are_each_a_bound_on_one_figure():
    from carla_env.evaluate import missed_targets

    good = {"route_completion": 0.95, "collisions_per_km": 0.1, "lane_invasions_per_km": 1.0}
    good["pedestrian_collisions_per_km"] = 0.05
    assert missed_targets({**good, "red_light_runs_per_km": 0.0}) == []
    assert missed_targets({**good, "red_light_runs_per_km": 0.0, "pedestrian_collisions_per_km": 0.06}) == [
        "<= 0.05 pedestrian collisions/km"
    ]
    assert missed_targets({**good, "red_light_runs_per_km": 0.4, "route_completion": 0.89}) == [
        "route completion >= 90%",
        "no red-light run",
    ]


def test_make_eval_passes_videos_to_the_cli():
    out = subprocess.run(
        ["make", "-n", "eval", "EXP=ppo", "POLICY=autopilot", "EVAL_CONFIG=experiments/ppo/config.yaml", "VIDEOS=runs/v"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert "-m carla_env.evaluate --policy autopilot --config experiments/ppo/config.yaml" in out
    assert '--failure-videos "runs/v"' in out


def test_a_video_that_cannot_be_written_is_an_error_not_a_missing_file():
    from carla_env.video import Mp4Writer

    with pytest.raises(OSError, match="cannot write a video to /proc/self/x.mp4"):
        Mp4Writer(Path("/proc/self/x.mp4"), 10.0).write(np.zeros((64, 64, 3), np.uint8))
