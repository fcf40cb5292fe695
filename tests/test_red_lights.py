"""Red-light runs as the leaderboard counts them: a driver that ignores lights runs them and each run is
counted; the reference autopilot, which stops at red and yellow, runs none on the same routes."""

import pytest

import carla_env.agents.route_autopilot as route_autopilot
from carla_env.config import load_config
from carla_env.evaluate import evaluate
from tests.conftest import real_town_path

SEEDS = [10_000, 10_001, 10_002, 10_003]


@pytest.fixture
def config():
    # Without walkers: the routes and traffic these seeds were chosen on (walkers change the timing).
    return load_config(
        "experiments/ppo/config.yaml", {"simulator": {"backend": "embedded", "carla": {"walkers": 0}}}
    )


@pytest.mark.parametrize("town", ["GridTown03", "Town10HD"])
def test_a_driver_that_ignores_lights_runs_red_lights_and_the_autopilot_none(config, town, monkeypatch):
    town = real_town_path(town) if town.startswith("Town") else town
    obeys = evaluate(config, "autopilot", SEEDS, [town])["episodes"]
    monkeypatch.setattr(route_autopilot, "STOP_STATES", ())  # drives through red and yellow alike
    ignores = evaluate(config, "autopilot", SEEDS, [town])["episodes"]
    assert sum(e["red_light_runs"] for e in obeys) == 0
    assert sum(e["red_light_runs"] for e in ignores) >= 1
    # A run is penalised in the driving score as the leaderboard does (x0.7 each).
    run = next(e for e in ignores if e["red_light_runs"])
    assert run["driving_score"] <= 0.7 * run["route_completion"] + 1e-9


def test_a_red_light_run_ends_the_episode_with_its_penalty(monkeypatch):
    """The experiments' reward treats a red-light run as the infraction the targets allow none of: the
    step that crosses a red stop line ends the episode and costs red_light_penalty."""
    from carla_env.env import CarlaEnv
    from carla_env.evaluate import AutopilotPolicy

    monkeypatch.setattr(route_autopilot, "STOP_STATES", ())  # drives through red and yellow alike
    env = CarlaEnv(
        load_config(
            "experiments/ppo/config.yaml", {"simulator": {"backend": "embedded", "town": "GridTown03"}}
        )
    )
    penalty = env.experiment.options.red_light_penalty
    policy = AutopilotPolicy(env)
    ran = []
    for seed in SEEDS:
        obs, _ = env.reset(seed=seed)
        policy.reset(env, seed)
        terminated = truncated = False
        while not (terminated or truncated):
            obs, reward, terminated, truncated, info = env.step(policy(obs, env))
            if info["red_light_runs"]:
                ran.append((terminated, reward))
                break
    env.close()
    assert penalty > 0 and ran, "the light-ignoring driver ran no red light on these routes"
    for terminated, reward in ran:
        assert terminated and reward <= -penalty + 0.5  # at most 5 m of progress (0.1 per metre) that step


def test_an_entry_on_red_costs_its_penalty_before_the_leaderboard_run_ends_the_episode(monkeypatch):
    """red_light_entry_penalty is charged the step the front bumper crosses a red stop line; the episode
    goes on until the leaderboard's run (the tail over the line) ends it, as before."""
    from carla_env.env import CarlaEnv
    from carla_env.evaluate import AutopilotPolicy

    monkeypatch.setattr(route_autopilot, "STOP_STATES", ())  # drives through red and yellow alike
    overrides = {
        "simulator": {"backend": "embedded", "town": "GridTown03"},
        "experiment": {"options": {"red_light_entry_penalty": 3.0}},
    }
    env = CarlaEnv(load_config("experiments/ppo/config.yaml", overrides))
    policy = AutopilotPolicy(env)
    entry = run = None
    try:
        for seed in SEEDS:
            obs, _ = env.reset(seed=seed)
            policy.reset(env, seed)
            terminated = truncated = False
            step = 0
            while not (terminated or truncated):
                obs, reward, terminated, truncated, info = env.step(policy(obs, env))
                step += 1
                state = env.experiment.driving_state
                if state.red_light_entries and entry is None:
                    entry = (seed, step, terminated, reward, info["red_light_runs"])
                if state.red_light_runs:
                    run = (seed, step, terminated)
                    break
            if run:
                break
    finally:
        env.close()
    assert entry and run, "the light-ignoring driver ran no red light on these routes"
    seed, step, terminated, reward, runs_so_far = entry
    assert seed == run[0] and step < run[1] and run[2]  # the same light: entered first, the run ends it
    assert not terminated and runs_so_far == 0 and reward <= -3.0 + 0.5
