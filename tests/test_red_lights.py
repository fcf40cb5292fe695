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
    return load_config("experiments/ppo/config.yaml", {"simulator": {"backend": "embedded"}})


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
