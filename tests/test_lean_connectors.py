"""The lean connector pipelines of CarlaEnvRunner give the episodes RLlib's own pipelines give.

Two runners in this process on the same small config, seed and weights, one with the lean pipelines
(carla_env.rllib.connectors) and one with RLlib's (StockConnectorsEnvRunner); the torch seed is set
before each sample() call, so the stochastic actions are drawn alike. Episodes end inside the calls
(max_steps 25), so autoresets and episode cuts are covered. PPO (Box actions, sampled from a Gaussian
and unsquashed) and DQN (Discrete, epsilon-greedy in the module), exploring and not.
"""

import pickle
from pathlib import Path

import numpy as np
import pytest

from carla_env.config import deep_merge, load_config
from tests.conftest import SMALL_RUNNER

ROOT = Path(__file__).resolve().parents[1]

SMALL = deep_merge(
    SMALL_RUNNER,
    {
        "simulator": {"town": ["GridTown01", "GridTown02"]},
        "experiment": {"max_steps": 25},
        "training": {"num_env_runners": 0},
    },
)
DQN_SETTINGS = {"replay_buffer_config": {"type": "PrioritizedEpisodeReplayBuffer", "capacity": 2000}}


def make_runners(exp: str):
    from ray.tune import register_env

    from carla_env.env import CarlaEnv
    from carla_env.rllib.algorithm import ENV_NAME, build_algo_config
    from carla_env.rllib.env_runner import CarlaEnvRunner, StockConnectorsEnvRunner

    overrides = dict(SMALL, training={**SMALL["training"], "settings": DQN_SETTINGS if exp == "dqn" else {}})
    config = load_config(ROOT / "experiments" / exp / "config.yaml", overrides)
    register_env(ENV_NAME, lambda env_config: CarlaEnv(env_config))
    algo_config = build_algo_config(config).debugging(seed=11)
    lean = CarlaEnvRunner(config=algo_config, worker_index=1, num_workers=1)
    stock = StockConnectorsEnvRunner(config=algo_config, worker_index=1, num_workers=1)
    lean.module.load_state_dict(stock.module.state_dict())
    assert lean.lean and not stock.lean
    return lean, stock


def episode_fields(episode) -> dict:
    return {
        "id": episode.id_,
        "t_started": episode.t_started,
        "observations": episode.get_observations(),
        "actions": episode.get_actions(),
        "rewards": episode.get_rewards(),
        "infos": episode.get_infos(),
        "terminated": episode.is_terminated,
        "truncated": episode.is_truncated,
        "extra_model_outputs": {k: episode.get_extra_model_outputs(k) for k in episode.extra_model_outputs},
    }


def assert_same(a, b, where=""):
    if isinstance(a, dict):
        assert isinstance(b, dict) and sorted(a) == sorted(b), where
        for k in a:
            assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list | tuple):
        assert isinstance(b, list | tuple) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, np.ndarray | np.generic):
        assert type(a) is type(b) and a.dtype == b.dtype and a.shape == b.shape, where
        np.testing.assert_array_equal(a, b, err_msg=where)
    else:
        assert type(a) is type(b) and a == b, where


@pytest.mark.timeout(600)
@pytest.mark.parametrize("exp", ["ppo", "dqn"])
def test_lean_pipelines_sample_the_episodes_rllibs_own_do(exp, tmp_path):
    import torch

    lean, stock = make_runners(exp)
    try:
        ids = {}
        # Not exploring from new episodes on: an episode's chunks carry one step of the last as lookback.
        for call, explore in enumerate([True, True, True, False]):
            episodes = {}
            for name, runner in (("lean", lean), ("stock", stock)):
                torch.manual_seed(100 + call)
                episodes[name] = runner.sample(num_timesteps=36, explore=explore, force_reset=not explore)
            assert len(episodes["lean"]) == len(episodes["stock"]) >= 3
            for i, (a, b) in enumerate(zip(episodes["lean"], episodes["stock"], strict=True)):
                fa, fb = episode_fields(a), episode_fields(b)
                ids[fa.pop("id")] = fb.pop("id")  # random ids: the same episode has one in each runner
                assert_same(fa, fb, f"call {call} episode {i}")
            if exp == "ppo" and explore:
                extra = episodes["lean"][0].extra_model_outputs
                assert {"action_logp", "action_dist_inputs"} <= set(extra)
        assert len(ids) > 3  # episodes ended and new ones began inside the calls
        # What the algorithm and our progress line read from a runner's metrics is there alike.
        ma, mb = lean.get_metrics(), stock.get_metrics()
        for key in ("num_env_steps_sampled", "num_episodes", "episode_return_mean", "episode_len_mean"):
            assert ma[key] == mb[key], key
        assert "env_to_module_connector" not in ma and "module_to_env_connector" in mb
        # A runner's checkpoint holds the lean pipelines whole (class and constructor arguments), and
        # restores.
        lean.save_to_path(tmp_path)
        lean.restore_from_path(tmp_path)
        for name, pipeline in (
            ("env_to_module_connector", lean._env_to_module),
            ("module_to_env_connector", lean._module_to_env),
        ):
            saved = pickle.loads((tmp_path / name / "class_and_ctor_args.pkl").read_bytes())
            args, kwargs = saved["ctor_args_and_kwargs"]
            again = saved["class"](*args, **kwargs)
            assert type(again) is type(pipeline)
            assert again.get_ctor_args_and_kwargs()[1].keys() == kwargs.keys()
    finally:
        lean.stop()
        stock.stop()


def test_a_user_connector_keeps_rllibs_pipelines():
    """Anything but RLlib's default pieces (here a user's env-to-module piece): RLlib's pipelines as they are."""
    from ray.rllib.connectors.connector_v2 import ConnectorV2
    from ray.tune import register_env

    from carla_env.env import CarlaEnv
    from carla_env.rllib.algorithm import ENV_NAME, build_algo_config
    from carla_env.rllib.env_runner import CarlaEnvRunner

    class PassThrough(ConnectorV2):
        def __call__(self, *, batch, **kwargs):
            return batch

    config = load_config(ROOT / "experiments/ppo/config.yaml", SMALL)
    register_env(ENV_NAME, lambda env_config: CarlaEnv(env_config))
    algo_config = build_algo_config(config).env_runners(env_to_module_connector=lambda *a: PassThrough())
    runner = CarlaEnvRunner(config=algo_config, worker_index=1, num_workers=1)
    try:
        assert not runner.lean
        assert type(runner._env_to_module).__name__ == "EnvToModulePipeline"
        assert sum(len(e) for e in runner.sample(num_timesteps=6)) >= 6
    finally:
        runner.stop()


@pytest.mark.timeout(600)
def test_training_seed_makes_runs_start_alike():
    """training.seed: two runners built from one seed (each as a fresh run would build it) draw the
    same first weights and sample the same episodes; another seed does not."""
    from ray.tune import register_env

    from carla_env.env import CarlaEnv
    from carla_env.rllib.algorithm import ENV_NAME, build_algo_config
    from carla_env.rllib.env_runner import CarlaEnvRunner

    register_env(ENV_NAME, lambda env_config: CarlaEnv(env_config))

    def first_steps(seed: int):
        config = load_config(
            ROOT / "experiments/ppo/config.yaml", deep_merge(SMALL, {"training": {"seed": seed}})
        )
        runner = CarlaEnvRunner(config=build_algo_config(config), worker_index=1, num_workers=1)
        try:
            weights = runner.module.state_dict()
            episodes = runner.sample(num_timesteps=36, explore=True)
            return weights, [episode_fields(e) for e in episodes]
        finally:
            runner.stop()

    (w1, e1), (w2, e2), (w3, e3) = first_steps(7), first_steps(7), first_steps(8)
    assert_same({k: np.asarray(v) for k, v in w1.items()}, {k: np.asarray(v) for k, v in w2.items()})
    for a, b in zip(e1, e2, strict=True):
        a.pop("id"), b.pop("id")  # episode ids are uuids
        assert_same(a, b)
    assert not all(np.array_equal(np.asarray(w1[k]), np.asarray(w3[k])) for k in w1)
    assert not np.array_equal(e1[0]["observations"], e3[0]["observations"])  # another start
