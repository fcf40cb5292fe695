"""End to end on the embedded backend: train, checkpoint, resume; bad input exits 2 and keeps the run."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]

TINY = {
    "simulator": {"backend": "embedded", "traffic": {"vehicles": 5}},
    "experiment": {
        "max_steps": 60,
        "sensors": {
            "birdview": {
                "type": "sensor.birdview",
                "packed": True,
                "size": 48,
                "pixels_per_meter": 2.0,
                "ego_offset": 10,
            }
        },
    },
    "training": {
        "checkpoint_every": 1,
        "model": {"conv_filters": [[8, [4, 4], 4], [16, [3, 3], 2]], "head_fcnet_hiddens": [32]},
        "settings": {
            "train_batch_size_per_learner": 8,
            "num_steps_sampled_before_learning_starts": 100,
            "replay_buffer_config": {"type": "TransitionReplay", "capacity": 2000},
            "training_intensity": 0.5,
        },
        "reporting": {"min_sample_timesteps_per_iteration": 150},
    },
}


def tiny_config(tmp_path) -> Path:
    base = yaml.safe_load((ROOT / "experiments/dqn/config.yaml").read_text())
    base.pop("profiles")  # the tiny settings below, on any machine
    for section, values in TINY.items():
        base.setdefault(section, {})
        for k, v in values.items():
            base[section][k] = (
                {**base[section][k], **v}
                if isinstance(v, dict) and k in base[section] and k != "sensors"
                else v
            )
    base["experiment"]["sensors"] = {**TINY["experiment"]["sensors"]}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(base))
    return path


def train(*args, timeout=420):
    return subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


def recorded(run: Path, checkpoint: str) -> bool:
    """Tune's newest experiment state parses and was written after `checkpoint` (it is rewritten after
    every result, so it then knows that checkpoint)."""
    checkpoints, states = list(run.glob(f"*/{checkpoint}")), sorted(run.glob("experiment_state-*.json"))
    if not checkpoints or not states:
        return False
    try:
        json.loads(states[-1].read_text())
    except ValueError:
        return False
    return states[-1].stat().st_mtime >= checkpoints[0].stat().st_mtime


def iterations(run: Path) -> list[int]:
    (result,) = run.glob("*/result.json")
    return [json.loads(line)["training_iteration"] for line in result.read_text().splitlines()]


@pytest.mark.timeout(900)
def test_train_checkpoint_kill_resume(tmp_path, capsys):
    cfg, runs = tiny_config(tmp_path), tmp_path / "runs"
    run = runs / "e2e"
    proc = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "train.py"),
            str(cfg),
            "--name",
            "e2e",
            "--dir",
            str(runs),
            "--stop-iters",
            "4",
        ],
        cwd=ROOT,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 300
        # Two iterations checkpointed and recorded in Tune's experiment state (a kill while Tune writes
        # that state is its own case, below).
        while not recorded(run, "checkpoint_000001"):
            assert proc.poll() is None, proc.stdout.read()[-3000:]
            assert time.monotonic() < deadline, "no checkpoint within 5 minutes"
            time.sleep(0.1)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # kill -9 the whole run, Ray included
        proc.wait()
    saved = sorted(p.name for p in run.glob("*/checkpoint_*"))
    assert "checkpoint_000003" not in saved  # interrupted before the end
    # An existing run is never clobbered by accident.
    import infer as infer_cli
    import train as train_cli

    # Refusals come before Ray starts: checked in this process.
    assert train_cli.main([str(cfg), "--name", "e2e", "--dir", str(runs)]) == 2
    assert "--restore" in capsys.readouterr().err
    resumed = train(cfg, "--name", "e2e", "--dir", runs, "--restore")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert resumed.stdout.startswith("train e2e: DQN on the embedded backend (saved with the run); ")
    assert iterations(run)[-1] == 4
    assert iterations(run)[:2] == [1, 2]  # the history before the kill is kept, not overwritten
    # It continued from the last checkpoint, not from scratch.
    assert "iter    4" in resumed.stdout and "iter    1 " not in resumed.stdout
    assert list(run.glob("*/checkpoint_000003"))
    # Restored again once finished: nothing to train, said in one line with how to train it further.
    finished = train(cfg, "--name", "e2e", "--dir", runs, "--restore")
    assert finished.returncode == 0 and iterations(run)[-1] == 4
    assert finished.stdout.startswith("done: e2e had already reached its stop; last checkpoint: ")
    assert "--init-module " in finished.stdout and "checkpoint_00000" in finished.stdout
    # Killed while Tune rewrote its experiment state (Ray writes it in place): Tune would start over
    # from iteration 1 in a new folder; --restore says so and points at the newest checkpoint instead.
    state = max(run.glob("experiment_state-*.json"))  # the newest: names carry the session's time
    state.write_text(state.read_text()[:100])
    before = sorted(p.relative_to(run) for p in run.rglob("*"))
    assert train_cli.main([str(cfg), "--name", "e2e", "--dir", str(runs), "--restore"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert f"{state} was cut off" in line and "--init-module " in line
    assert sorted(p.relative_to(run) for p in run.rglob("*")) == before  # nothing written
    # Infer from the run folder: newest checkpoint, the config saved with the run.
    video, summary = tmp_path / "out.mp4", tmp_path / "out.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "infer.py"),
            str(run),
            "--episodes",
            "1",
            "--video",
            str(video),
            "--json",
            str(summary),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "checkpoint_000003" in proc.stdout and "route_completion" in proc.stdout
    result = json.loads(summary.read_text())
    assert len(result["episodes"]) == 1 and 0.0 <= result["mean"]["route_completion"] <= 1.0
    import cv2

    capture = cv2.VideoCapture(str(video))
    frames = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    ok, frame = capture.read()
    assert ok and frame.shape == (384, 384, 3) and frame.any()  # the 48 px BEV, 8x by whole pixels
    assert frames == result["episodes"][0]["steps"]  # one frame a step
    # The same BEV with PPO's continuous actions: refused in one line, not a TypeError mid-episode.
    assert infer_cli.main([str(run), "--config", str(tiny_ppo_config(tmp_path))]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "discrete actions (e.g. DQN), the config's experiment takes a continuous (2,)" in line


def test_auto_is_pinned_once_and_a_resumed_run_keeps_its_backend(tmp_path, monkeypatch):
    """`backend: auto` is resolved when the run starts and saved concrete; --restore reads the saved
    config, so a CARLA install that appeared since does not switch a run's simulator."""
    from carla_env.config import load_config
    from train import CONFIG_NAME, load_run_config, save_config

    monkeypatch.delenv("CARLA_ROOT", raising=False)
    monkeypatch.setattr("carla_env.backends._carla_server_reachable", lambda *a, **k: False)
    auto = tmp_path / "auto.yaml"
    auto.write_text((ROOT / "experiments/dqn/config.yaml").read_text())
    config, choice = load_run_config(auto, {}, None)
    assert config.simulator.backend == "embedded" and choice.reason.startswith("auto: no CARLA install")
    run = tmp_path / "run"
    save_config(config, run / CONFIG_NAME)
    assert load_config(run / CONFIG_NAME).simulator.backend == "embedded"
    monkeypatch.setenv("CARLA_ROOT", str(tmp_path))  # CARLA installed later
    assert load_run_config(auto, {}, None)[0].simulator.backend == "carla"  # a new run would take it
    resumed, choice = load_run_config(auto, {}, run)
    assert resumed.simulator.backend == "embedded" and str(choice) == "backend: embedded (saved with the run)"


@pytest.mark.parametrize("exp", ["dqn", "ppo"])
def test_on_a_gpu_the_gpu_profile_is_merged_saved_and_named(tmp_path, monkeypatch, exp):
    """`make train` on a GPU machine trains the config's profiles.gpu (runners on the GPU, generated
    towns only, a stop in minutes), says so in the first line, saves the merged config, and a resumed
    run keeps it even without a GPU. Both hardware paths build the same observation and network, so a
    module trained on either (experiments/EXP/pretrained) drives on the other."""
    from carla_env.config import load_config
    from carla_env.env import CarlaEnv
    from carla_env.evaluate import HELD_OUT_TOWN
    from train import CONFIG_NAME, first_line, load_run_config, save_config

    monkeypatch.setattr("train.has_gpu", lambda: True)
    monkeypatch.setattr("torch.cuda.get_device_name", lambda index: "NVIDIA H200")
    path = ROOT / f"experiments/{exp}/config.yaml"
    config, choice = load_run_config(path, {"training": {"num_env_runners": 3}}, None)
    assert config.profile == "gpu" and config.profiles == {}
    assert config.training.num_env_runners == 3  # a command-line option wins over the profile
    assert config.training.stop.minutes and config.training.stop.timesteps is None
    towns = config.simulator.town
    assert len(towns) >= 4 and HELD_OUT_TOWN not in towns
    assert all(t.startswith(("GridTown", "grid:")) for t in towns)  # every real CARLA town is held out
    assert "learner on GPU (NVIDIA H200), GPU profile (profiles.gpu of the config)" in first_line(
        config, choice, exp, str(tmp_path)
    )
    run = tmp_path / "run"
    save_config(config, run / CONFIG_NAME)
    monkeypatch.setattr("train.has_gpu", lambda: False)
    resumed, _ = load_run_config(path, {}, run)
    assert resumed == load_config(run / CONFIG_NAME) and resumed.profile == "gpu"
    on_cpu, _ = load_run_config(path, {}, None)
    assert on_cpu.profile is None and on_cpu.simulator.town == "GridTown01"
    assert CarlaEnv(on_cpu).observation_space == CarlaEnv(config).observation_space
    assert on_cpu.training.model == config.training.model
    assert load_run_config(path, {}, None, "gpu")[0].profile == "gpu"  # --profile gpu without a GPU
    monkeypatch.setattr("train.has_gpu", lambda: True)
    assert load_run_config(path, {}, None, "none")[0] == on_cpu  # --profile none: the config as written


def test_bad_input_exits_2_with_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("simulator:\n  town: Nowhere\n")
    proc = train(bad, "--dir", tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith(f"config error in {bad}: simulator.town")
    cfg = tiny_config(tmp_path)
    proc = train(cfg, "--name", "missing", "--dir", tmp_path / "runs", "--restore")
    assert proc.returncode == 2 and "no run at" in proc.stderr
    proc = train(cfg, "--name", "missing", "--dir", tmp_path / "runs", "--restore", "--stop-iters", 3)
    assert proc.returncode == 2 and "drop --stop" in proc.stderr
    for target, message in ((tmp_path / "nope", "checkpoint not found"), (tmp_path, "no RLlib checkpoint")):
        proc = subprocess.run(
            [sys.executable, str(ROOT / "infer.py"), str(target)],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=ROOT,
        )
        assert proc.returncode == 2 and message in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1


def tiny_ppo_config(tmp_path) -> Path:
    """experiments/ppo (continuous actions) with the BEV of tiny_config (DQN, discrete actions)."""
    base = yaml.safe_load((ROOT / "experiments/ppo/config.yaml").read_text())
    base.pop("profiles")
    base["simulator"].update(backend="embedded", traffic={"vehicles": 5}, town=["GridTown01", "GridTown03"])
    base["experiment"].update(max_steps=60, sensors=TINY["experiment"]["sensors"])
    base["training"].update(
        model={**TINY["training"]["model"], "vf_share_layers": True},
        settings={"train_batch_size_per_learner": 128, "minibatch_size": 64, "num_epochs": 1},
    )
    cfg = tmp_path / "ppo.yaml"
    cfg.write_text(yaml.safe_dump(base))
    return cfg


def test_ppo_trains_on_two_towns_and_infers_continuous_actions(tmp_path, capsys):
    cfg = tiny_ppo_config(tmp_path)
    base = yaml.safe_load(cfg.read_text())
    # The reward terms built for the next GPU run, on through --set: they train, and the run keeps them.
    terms = {"curve_speed_penalty": 0.05, "yield_penalty": 0.05, "predict_vehicles": True}
    sets = [a for k, v in terms.items() for a in ("--set", f"experiment.options.{k}={str(v).lower()}")]
    proc = train(cfg, "--name", "ppo", "--dir", tmp_path / "runs", "--stop-iters", 1, *sets)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "iter    1" in proc.stdout
    assert list((tmp_path / "runs/ppo").glob("*/checkpoint_000000"))
    from train import CONFIG_NAME

    saved = yaml.safe_load((tmp_path / "runs/ppo" / CONFIG_NAME).read_text())["experiment"]["options"]
    assert {k: saved[k] for k in terms} == terms and "curve_speed_penalty" not in base["experiment"][
        "options"
    ]
    summary = tmp_path / "ppo.json"
    proc = subprocess.run(
        [sys.executable, "infer.py", tmp_path / "runs/ppo", "--episodes", "1", "--json", summary],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(summary.read_text())["episodes"][0]["steps"] > 0
    import infer as infer_cli

    capsys.readouterr()
    assert infer_cli.main([str(tmp_path / "runs/ppo"), "--config", str(tiny_config(tmp_path))]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "gives a continuous (2,) float32 box (e.g. PPO)" in line and "discrete actions (e.g. DQN)" in line

    # A second run starts from the first one's weights (lr 0: they must come out unchanged).
    (first,) = (tmp_path / "runs/ppo").glob("*/checkpoint_000000")
    base["training"]["settings"]["lr"] = 0.0
    cfg.write_text(yaml.safe_dump(base))
    other = tmp_path / "other.yaml"  # a smaller BEV: the module does not fit it
    other.write_text(yaml.safe_dump({**base, "experiment": {**base["experiment"], "sensors": {
        "birdview": {**TINY["experiment"]["sensors"]["birdview"], "size": 40}}}}))  # fmt: skip
    import train as train_cli

    for config, module, message in (
        (cfg, tmp_path / "nope", "no policy module under"),
        (other, first, "takes observations"),
    ):  # refused before Ray starts: in this process
        args = [config, "--name", "warm", "--dir", tmp_path / "runs", "--init-module", module]
        assert train_cli.main([str(a) for a in args]) == 2
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert line.startswith("--init-module: ") and message in line
        assert not (tmp_path / "runs/warm").exists()  # nothing half-made
    proc = train(cfg, "--name", "warm", "--dir", tmp_path / "runs", "--stop-iters", 1, "--init-module", first)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (warm,) = (tmp_path / "runs/warm").glob("*/checkpoint_000000")
    from carla_env.rllib.policy import ModulePolicy

    before, after = (ModulePolicy.from_checkpoint(c).module.state_dict() for c in (first, warm))
    assert before.keys() == after.keys()
    assert all(np.array_equal(np.asarray(before[k]), np.asarray(after[k])) for k in before)


def one_line(proc) -> str:
    """The single stderr line of a refused command (exit 2)."""
    assert proc.returncode == 2, proc.stderr[-3000:]
    (line,) = proc.stderr.strip().splitlines()
    return line


def test_first_run_mistakes_are_one_line_and_write_nothing(tmp_path):
    runs = tmp_path / "runs"
    garbage = tmp_path / "garbage.xodr"
    garbage.write_text("not a map")
    cfg = tiny_config(tmp_path)
    bad_town = tmp_path / "badtown.yaml"
    bad_town.write_text(cfg.read_text().replace("town: GridTown01", f"town: {garbage}"))
    line = one_line(train(bad_town, "--dir", runs))
    assert line.startswith(f"config error in {bad_town}: simulator.town: OpenDRIVE file {garbage} is not XML")
    assert not runs.exists()  # no run folder to block the next run of that name

    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert one_line(train(empty, "--dir", runs)).startswith(f"config file {empty} is empty")

    line = one_line(train(cfg, "--dir", runs, "--num-env-runners", "-1"))
    assert line == "train.py: argument --num-env-runners: must be >= 0, got -1 (--help lists the options)"

    line = one_line(train(cfg, "--dir", runs, "--stop-minutes", "0"))
    assert line == "train.py: argument --stop-minutes: must be > 0, got 0 (--help lists the options)"

    cpus = os.cpu_count()  # Ray would wait for CPUs that are not there, without a word
    line = one_line(train(cfg, "--dir", runs, "--num-env-runners", str(cpus)))
    assert line == (
        f"training.num_env_runners: {cpus} env runners need a CPU each plus one for the learner; "
        f"this machine has {cpus}: pass --num-env-runners {cpus - 1} or fewer"
    )

    line = one_line(train(cfg, "--dir", runs, "--profile", "gpu"))
    assert line == f"{cfg} has no profiles.gpu (its profiles: none)"

    line = one_line(train("experiments/nonexistent/config.yaml", "--dir", runs))  # make train EXP=nonexistent
    assert line.startswith(
        "config file not found: experiments/nonexistent/config.yaml; the experiments are: "
    )
    assert "dqn" in line and "ppo" in line
    assert not runs.exists()

    # A run stopped before its first checkpoint: --restore says so and leaves its history alone.
    trial = runs / "early" / "DQN_carla_env_0"
    trial.mkdir(parents=True)
    (trial / "progress.csv").write_text("training_iteration\n1\n")
    line = one_line(train(cfg, "--name", "early", "--dir", runs, "--restore"))
    assert line == f"--restore: run {runs / 'early'} has no checkpoint yet, nothing to resume; " + (
        "start it afresh with --overwrite"
    )
    assert (trial / "progress.csv").read_text() == "training_iteration\n1\n"
    assert sorted(p.name for p in (runs / "early").rglob("*")) == ["DQN_carla_env_0", "progress.csv"]


def test_set_mistakes_are_one_line_and_write_nothing(tmp_path, capsys):
    """train.py --set (in this process: each is refused before Ray starts)."""
    import train as train_cli

    cfg, runs = tiny_config(tmp_path), tmp_path / "runs"

    def refused(*args) -> str:
        try:
            code = train_cli.main([str(cfg), "--dir", str(runs), *args])
        except SystemExit as e:  # argparse's
            code = e.code
        assert code == 2
        (line,) = capsys.readouterr().err.strip().splitlines()
        return line

    assert refused("--set", "experiment.options.progress_reward").split(": ", 1)[1] == (
        "argument --set: needs KEY=VALUE with a dotted config key, e.g. "
        "experiment.options.curve_speed_penalty=0.05; got 'experiment.options.progress_reward' "
        "(--help lists the options)"
    )
    line = refused("--set", "experiment.options.progress_rewrd=0.2")
    assert line.startswith(f"config error in {cfg}: experiment.options.progress_rewrd: unknown key")
    assert line.endswith("(given by --set experiment.options.progress_rewrd)")
    line = refused("--set", "experiment.type=nowhere:Nothing")  # refused by the import, not the schema
    assert "experiment.type: cannot import 'nowhere:Nothing'" in line
    assert line.endswith("(given by --set experiment.type)")
    line = refused("--set", "training=5")  # a mapping replaced by a number: not dropped
    assert line.startswith(f"config error in {cfg}: training: ") and line.endswith(
        "(given by --set training)"
    )
    line = refused("--set", "training.stop.iterations=3", "--stop-iters", "1")
    assert line == "--set and a flag both set training.stop.iterations: give it once"
    line = refused("--name", "any", "--restore", "--set", "simulator.seed=1")
    assert line == "--restore continues a run with the config it was started with; drop --set"
    assert not runs.exists()


@pytest.mark.timeout(600)
def test_progress_lock_and_ctrl_c_checkpoint(tmp_path):
    """Progress while an iteration runs, a live run refuses --overwrite, Ctrl-C checkpoints and exits 130."""
    cfg, runs = tiny_config(tmp_path), tmp_path / "runs"
    data = yaml.safe_load(cfg.read_text())
    # Long iterations (400 steps), no checkpoint by count or time: the only one is Ctrl-C's.
    data["training"].update(checkpoint_every=1000, checkpoint_minutes=60, progress_seconds=1)
    data["training"]["reporting"] = {"min_sample_timesteps_per_iteration": 400}
    cfg.write_text(yaml.safe_dump(data))
    run = runs / "live"
    proc = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "train.py"),
            cfg,
            "--name",
            "live",
            "--dir",
            runs,
            "--stop-timesteps",
            "200000",
        ],
        cwd=ROOT,
        start_new_session=True,  # its own process group: Ctrl-C in a terminal signals the whole group
        stdout=subprocess.PIPE,
        stderr=(tmp_path / "stderr.txt").open("w"),  # a file: a full pipe nobody reads would block it
        text=True,
    )
    lines = []
    try:
        deadline = time.monotonic() + 300
        while not any(line.startswith("iter    1 ") for line in lines):
            line = proc.stdout.readline()
            assert line or proc.poll() is None, "".join(lines) + (tmp_path / "stderr.txt").read_text()[-3000:]
            assert time.monotonic() < deadline, "no iteration within 5 minutes:\n" + "".join(lines)
            lines.append(line)
        assert not list(run.glob("*/checkpoint_*"))
        refused = train(cfg, "--name", "live", "--dir", runs, "--overwrite")
        assert "is in use by another train.py" in one_line(refused)
        assert (run / "carla_env_config.yaml").is_file() and list(run.glob("*/progress.csv"))
        os.killpg(proc.pid, signal.SIGINT)
        out, _ = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    lines += out.splitlines(keepends=True)
    err = (tmp_path / "stderr.txt").read_text()
    assert lines[0].startswith(
        "train live: DQN on the embedded backend (set in the config); "
        f"learner on {'GPU' if torch_has_cuda() else 'CPU (no CUDA GPU)'}"
    )
    assert lines[0].rstrip().endswith(f"results in {run}; watch with: tensorboard --logdir {run}")
    # Within the first iteration: the env runner's steps, counted as they are sampled, with a rate and ETA.
    first_iter = next(k for k, line in enumerate(lines) if line.startswith("iter    1 "))
    live = [line for line in lines[:first_iter] if line.startswith("   ... steps") and "steps/s" in line]
    assert live, "".join(lines)
    assert "iteration 1 running for" in live[-1] and "ETA" in live[-1] and "to 200000 steps" in live[-1]
    assert proc.returncode == 130, err[-3000:]
    assert "Ctrl-C: writing a checkpoint" in err
    (checkpoint,) = run.glob("*/checkpoint_*")
    assert f"last checkpoint: {checkpoint}; resume with: " in err
    assert list(run.glob("*/events.out.tfevents.*"))  # what tensorboard --logdir reads


def torch_has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.timeout(600)
def test_a_stop_in_minutes_ends_the_run_checkpointed_by_wall_time(tmp_path):
    """stop.minutes (the GPU profiles' 20 and 30) ends a run by Tune's training time, and the progress
    lines' ETA counts down to it; a command-line stop replaces the config's. checkpoint_minutes writes
    one at each iteration end past it. One run for both (each run starts Ray), and it says nothing of
    observation spaces: that warning came from RLlib's DreamerV3 debug module, imported when Tune was
    given the algorithm's name (train.py hands it the class)."""
    import csv

    cfg, runs = tiny_config(tmp_path), tmp_path / "runs"
    data = yaml.safe_load(cfg.read_text())
    # By count only the end one; all kept (the default keeps the newest 3).
    data["training"].update(checkpoint_every=1000, checkpoint_minutes=0.001, keep_checkpoints=100)
    cfg.write_text(yaml.safe_dump(data))
    proc = train(cfg, "--name", "minutes", "--dir", runs, "--stop-minutes", "0.1")  # 6 s
    assert proc.returncode == 0, proc.stderr[-3000:]
    iterations = [line for line in proc.stdout.splitlines() if line.startswith("iter ")]
    assert iterations and all("to 0.1 training minutes" in line for line in iterations), proc.stdout
    (progress,) = (runs / "minutes").glob("*/progress.csv")
    rows = list(csv.DictReader(progress.open()))
    times = [float(row["time_total_s"]) for row in rows]
    assert times[-1] >= 6.0 and all(t < 6.0 for t in times[:-1])  # stopped at the first result past 6 s
    assert len(rows) >= 2  # else the end-of-run checkpoint alone would pass the check below
    assert yaml.safe_load((runs / "minutes" / "carla_env_config.yaml").read_text())["training"]["stop"] == {
        "timesteps": None,
        "iterations": None,
        "minutes": 0.1,
    }
    # One checkpoint per iteration, each by time (the end one is the last of them).
    assert sorted(p.name for p in (runs / "minutes").glob("*/checkpoint_*")) == [
        f"checkpoint_{k:06d}" for k in range(len(rows))
    ]
    output = proc.stdout + proc.stderr
    assert "observation space" not in output and "precision lowered" not in output


def test_reached_its_stop_reads_the_trial_that_restore_continues(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_script", ROOT / "train.py")
    train_script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train_script)

    def trial(name: str, done: bool, age: float) -> Path:
        folder = tmp_path / name
        (folder / "checkpoint_000001").mkdir(parents=True)
        lines = [json.dumps({"training_iteration": i, "done": done and i == 3}) for i in (1, 2, 3)]
        (folder / "result.json").write_text("\n".join(lines) + "\n")
        os.utime(folder / "checkpoint_000001", (time.time() - age,) * 2)
        return folder

    assert not train_script.reached_its_stop(tmp_path)  # no checkpoint yet
    trial("old_finished", done=True, age=100)
    newest = trial("restarted", done=False, age=0)  # a newer trial (a restart): its state decides
    assert not train_script.reached_its_stop(tmp_path)
    (newest / "result.json").write_text(json.dumps({"done": True}) + "\n")
    assert train_script.reached_its_stop(tmp_path)
    (newest / "result.json").write_text('{"done": tr')  # cut off mid-write
    assert not train_script.reached_its_stop(tmp_path)
