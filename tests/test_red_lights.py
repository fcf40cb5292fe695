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


def test_with_red_light_line_front_the_episode_ends_when_the_front_enters_on_red(monkeypatch):
    """red_light_line: front ends the episode (with red_light_penalty) the step the front bumper crosses
    a red stop line: before the leaderboard's run (the car's tail over the line) on the same drive."""
    from carla_env.env import CarlaEnv
    from carla_env.evaluate import AutopilotPolicy

    monkeypatch.setattr(route_autopilot, "STOP_STATES", ())  # drives through red and yellow alike

    def first_red(rule: str) -> tuple[int, bool, float, dict] | None:
        overrides = {
            "simulator": {"backend": "embedded", "town": "GridTown03"},
            "experiment": {"options": {"red_light_line": rule}},
        }
        env = CarlaEnv(load_config("experiments/ppo/config.yaml", overrides))
        policy = AutopilotPolicy(env)
        try:
            for seed in SEEDS:
                obs, _ = env.reset(seed=seed)
                policy.reset(env, seed)
                for step in range(1, 10_000):
                    obs, reward, terminated, truncated, info = env.step(policy(obs, env))
                    state = env.experiment.driving_state
                    event = state.red_light_entries if rule == "front" else state.red_light_runs
                    if event:
                        return seed, step, terminated, reward, info
                    if terminated or truncated:
                        break
        finally:
            env.close()
        return None

    tail, front = first_red("tail"), first_red("front")
    assert tail and front, "the light-ignoring driver ran no red light on these routes"
    assert front[0] == tail[0] and front[1] < tail[1]  # same episode, the front crosses first
    _, _, terminated, reward, info = front
    assert terminated and reward <= -10.0 + 0.5 and info["red_light_runs"] == 0  # not a leaderboard run (yet)
