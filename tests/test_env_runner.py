"""CarlaEnvRunner: the envs of one runner each take their own slot, and sampling goes through them all.

A small DQN config on the embedded backend, one remote EnvRunner with three envs, on a local Ray."""

from pathlib import Path

import pytest

from carla_env.config import deep_merge, load_config
from tests.conftest import SMALL_RUNNER

ROOT = Path(__file__).resolve().parents[1]
TOWNS = ["GridTown01", "GridTown02", "GridTown03", "GridTown04"]

SMALL = deep_merge(
    SMALL_RUNNER,
    {
        "simulator": {"town": TOWNS},
        "experiment": {"max_steps": 40},
        "training": {
            "num_env_runners": 1,
            "settings": {
                "train_batch_size_per_learner": 8,
                "num_steps_sampled_before_learning_starts": 10**6,  # sampling only
                "replay_buffer_config": {"type": "PrioritizedEpisodeReplayBuffer", "capacity": 2000},
            },
            "reporting": {"min_sample_timesteps_per_iteration": 120},
        },
    },
)


def runner_envs(runner) -> list[dict]:
    envs = [e.unwrapped for e in runner.env.unwrapped.envs]
    return [{"slot": e.slot, "town": e.simulator_config.town, "stepped": e.core is not None} for e in envs]


@pytest.mark.timeout(600)
def test_each_env_of_a_runner_takes_its_own_slot_and_town_and_all_are_sampled():
    import ray

    from carla_env.env import slot_index
    from carla_env.rllib.algorithm import build_algo_config, init_ray

    config = load_config(ROOT / "experiments/dqn/config.yaml", SMALL)
    init_ray(ROOT)
    try:
        algo = build_algo_config(config).build_algo()
        try:
            result = algo.train()
            (envs,) = algo.env_runner_group.foreach_env_runner(runner_envs, local_env_runner=False)
        finally:
            algo.stop()
    finally:
        ray.shutdown()
    # Runner 1 of 1: vector index v takes slot 1 + 2v, and with it the town list's entry (and on the
    # carla backend the server's ports and GPU).
    assert [e["slot"] for e in envs] == [slot_index(1, v, 1) for v in range(3)] == [1, 3, 5]
    assert [e["town"] for e in envs] == [TOWNS[s % len(TOWNS)] for s in (1, 3, 5)]
    assert all(e["stepped"] for e in envs)  # each env built its world and was stepped
    assert result["env_runners"]["num_env_steps_sampled"] >= 120
