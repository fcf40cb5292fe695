"""TransitionReplay (carla_env/rllib/replay.py): n-step transitions from episode chunks as RLlib's env
runners return them, checked against a brute-force n-step computation over whole episodes."""

import numpy as np
import pytest
from ray.rllib.core.columns import Columns
from ray.rllib.env.single_agent_episode import SingleAgentEpisode

from carla_env.rllib.replay import TransitionReplay

GAMMA = 0.9


def episode_chunks(index: int, length: int, cut_every: int, *, terminated: bool, rng):
    """One episode of `length` steps as an env runner hands it over: chunks of `cut_every` steps, each
    successor starting from the last observation of the one before. Observation = (episode, t)."""
    rewards = rng.normal(size=length).astype(np.float32)
    actions = rng.integers(0, 5, size=length)
    episode = SingleAgentEpisode(observations=[np.array([index, 0], np.int32)])
    chunks = []
    for t in range(length):
        last = t == length - 1
        episode.add_env_step(
            np.array([index, t + 1], np.int32),
            int(actions[t]),
            float(rewards[t]),
            terminated=last and terminated,
            truncated=last and not terminated,
        )
        if last or (t + 1) % cut_every == 0:
            chunks.append(episode.to_numpy())
            if not last:
                episode = episode.cut()
    return chunks, actions, rewards


def expected_transitions(index, actions, rewards, n, terminated):
    length = len(actions)
    out = {}
    for t in range(length):
        span = min(n, length - t)
        out[(index, t)] = dict(
            action=actions[t],
            reward=sum(GAMMA**k * rewards[t + k] for k in range(span)),
            next=(index, t + span),
            n_step=span,
            terminated=terminated and t + span == length,
        )
    return out


def everything(buffer: TransitionReplay) -> dict:
    """Every stored transition, keyed by its observation, drawn with a batch as large as the buffer's
    contents many times over (priorities are all equal here)."""
    batch, _ = buffer.sample(len(buffer) * 40)
    got = {}
    for i in range(len(batch[Columns.ACTIONS])):
        key = tuple(int(v) for v in batch[Columns.OBS][i])
        got[key] = dict(
            action=int(batch[Columns.ACTIONS][i]),
            reward=float(batch[Columns.REWARDS][i]),
            next=tuple(int(v) for v in batch[Columns.NEXT_OBS][i]),
            n_step=int(batch["n_step"][i]),
            terminated=bool(batch[Columns.TERMINATEDS][i]),
        )
    return got


@pytest.mark.parametrize("n", [1, 3])
def test_interleaved_chunks_give_the_n_step_transitions_of_whole_episodes(n):
    rng = np.random.default_rng(0)
    buffer = TransitionReplay(1000, n_step=n, gamma=GAMMA, seed=0)
    episodes = [
        episode_chunks(0, 17, 4, terminated=True, rng=rng),  # chunks of 4 steps, a collision at the end
        episode_chunks(1, 9, 2, terminated=False, rng=rng),  # chunks shorter than n, a time-out
        episode_chunks(2, 2, 5, terminated=True, rng=rng),  # shorter than n altogether
        episode_chunks(3, 11, 1, terminated=False, rng=rng),
    ]
    want = {}
    for i, (_, actions, rewards) in enumerate(episodes):
        want.update(expected_transitions(i, actions, rewards, n, terminated=i in (0, 2)))
    # Sample calls hand over one chunk of every running episode at a time, interleaved.
    rounds = max(len(chunks) for chunks, _, _ in episodes)
    for r in range(rounds):
        buffer.add([chunks[r] for chunks, _, _ in episodes if r < len(chunks)])
    assert len(buffer) == len(want) == 17 + 9 + 2 + 11
    got = everything(buffer)
    assert got.keys() == want.keys()
    for key, transition in want.items():
        assert got[key]["action"] == transition["action"], key
        assert got[key]["reward"] == pytest.approx(transition["reward"], rel=1e-5), key
        for field in ("next", "n_step", "terminated"):
            assert got[key][field] == transition[field], (key, field)
    assert not buffer.open  # every episode ended: nothing waits


def test_steps_of_a_running_episode_wait_for_their_n_th_next_observation():
    rng = np.random.default_rng(1)
    buffer = TransitionReplay(100, n_step=3, gamma=GAMMA)
    chunks, _, _ = episode_chunks(0, 10, 5, terminated=True, rng=rng)
    buffer.add(chunks[:1])
    assert len(buffer) == 3  # steps 0..2 have t+3 <= 5; steps 3 and 4 wait
    assert set(everything(buffer)) == {(0, 0), (0, 1), (0, 2)}
    buffer.add(chunks[1:])
    assert len(buffer) == 10


def test_priorities_steer_sampling_and_importance_weights_correct_it():
    rng = np.random.default_rng(2)
    buffer = TransitionReplay(100, n_step=1, gamma=GAMMA, alpha=1.0, seed=3)
    chunks, _, _ = episode_chunks(0, 20, 20, terminated=True, rng=rng)
    buffer.add(chunks)
    # One transition 100x the others' TD error: drawn about 100/119 of the time, with the lowest weight.
    buffer.update_priorities(np.arange(20), np.where(np.arange(20) == 7, 1.0, 0.01))
    batch, slots = buffer.sample(4000)
    share = np.mean(slots == 7)
    assert 0.80 < share < 0.88
    assert batch["weights"].max() == pytest.approx(1.0)
    assert batch["weights"][slots == 7].max() < batch["weights"][slots != 7].min()


def test_importance_weights_are_normalised_over_the_buffer_not_the_batch():
    rng = np.random.default_rng(10)
    buffer = TransitionReplay(100, n_step=1, gamma=GAMMA, alpha=1.0, seed=11)
    buffer.add(episode_chunks(0, 10, 10, terminated=True, rng=rng)[0])
    errors = np.linspace(0.1, 1.0, 10)
    buffer.update_priorities(np.arange(10), errors)
    batch, slots = buffer.sample(2000, beta=0.5)
    priority = (errors + 1e-6) / (errors + 1e-6).sum()
    want = (10 * priority[slots]) ** -0.5 / (10 * priority.min()) ** -0.5  # RLlib's PER
    np.testing.assert_allclose(batch["weights"], want, rtol=1e-5)
    # A batch of the most likely transition alone keeps its small weight (not scaled up to 1).
    batch, slots = buffer.sample(1, beta=0.5)
    lone = (10 * priority[slots[0]]) ** -0.5 / (10 * priority.min()) ** -0.5
    assert batch["weights"][0] == pytest.approx(lone, rel=1e-5) and (lone < 1 or slots[0] == 0)


def test_a_lost_chunk_is_never_spliced_over():
    """A runner that fails after cutting an episode loses that chunk: the next one starts later than
    the waiting steps end, and no transition may span the gap."""
    rng = np.random.default_rng(12)
    buffer = TransitionReplay(100, n_step=3, gamma=GAMMA, seed=13)
    chunks, actions, rewards = episode_chunks(0, 12, 4, terminated=True, rng=rng)
    buffer.add([chunks[0], chunks[2]])  # steps 4-7 never arrive
    want = expected_transitions(0, actions, rewards, 3, terminated=True)
    got = everything(buffer)
    assert set(got) == {(0, 0), (0, 1)} | {(0, t) for t in range(8, 12)}
    for key, transition in got.items():
        assert transition["next"] == want[key]["next"] and transition["reward"] == pytest.approx(
            want[key]["reward"]
        )


def test_episodes_that_never_go_on_stop_waiting_once_their_frames_are_gone():
    rng = np.random.default_rng(14)
    buffer = TransitionReplay(30, n_step=3, gamma=GAMMA, seed=15)
    abandoned, _, _ = episode_chunks(99, 10, 5, terminated=False, rng=rng)
    buffer.add(abandoned[:1])  # its runner restarted: the rest never comes
    assert len(buffer.open) == 1
    for index in range(5):
        buffer.add(episode_chunks(index, 10, 10, terminated=True, rng=rng)[0])
    buffer.sample(8)
    assert not buffer.open


def test_a_full_buffer_keeps_the_newest_transitions_and_their_frames():
    rng = np.random.default_rng(4)
    buffer = TransitionReplay(50, n_step=3, gamma=GAMMA, seed=5)
    for index in range(12):  # 12 x 30 steps into room for 50
        chunks, _, _ = episode_chunks(index, 30, 7, terminated=index % 2 == 0, rng=rng)
        buffer.add(chunks)
    assert len(buffer) == 50
    got = everything(buffer)
    # The newest 50 transitions: episode 11 (30) and the last 20 of episode 10, observation and next
    # observation read back from the frame ring intact.
    assert set(got) == {(11, t) for t in range(30)} | {(10, t) for t in range(10, 30)}
    for (index, t), transition in got.items():
        assert transition["next"] == (index, t + transition["n_step"])


def test_transitions_whose_frames_were_overwritten_are_never_drawn():
    rng = np.random.default_rng(6)
    buffer = TransitionReplay(40, n_step=1, gamma=GAMMA, seed=7)
    want = {}
    for index in range(40):  # one-step episodes: two frames per transition, the frame ring runs out first
        chunks, actions, rewards = episode_chunks(index, 1, 1, terminated=True, rng=rng)
        want.update(expected_transitions(index, actions, rewards, 1, terminated=True))
        buffer.add(chunks)
    # 80 frames written into a ring of 51: episodes 15-39 still have both of theirs.
    intact = {(index, 0) for index in range(15, 40)}
    got = everything(buffer)
    assert set(got) == intact
    for key in intact:
        assert got[key]["action"] == want[key]["action"] and got[key]["next"] == want[key]["next"]


def test_bad_sizes_are_refused():
    with pytest.raises(ValueError, match="n_step"):
        TransitionReplay(10, n_step=0, gamma=GAMMA)
    # One round of long episodes overwrites the frames of everything stored: the capacity is named.
    tiny = TransitionReplay(2, n_step=3, gamma=GAMMA)
    tiny.add(episode_chunks(0, 60, 30, terminated=False, rng=np.random.default_rng(16))[0][:1])  # running
    with pytest.raises(ValueError, match="replay_buffer_config.capacity: 2 transitions"):
        tiny.sample(4)
    with pytest.raises(ValueError, match="empty"):
        TransitionReplay(10, n_step=1, gamma=GAMMA).sample(4)


@pytest.mark.timeout(600)
def test_dqn_trains_from_it_while_a_remote_runner_samples_and_the_runner_gets_the_new_weights():
    import ray

    from carla_env.config import load_config
    from carla_env.rllib.algorithm import build_algo_config, init_ray
    from tests.test_env_runner import ROOT, SMALL

    settings = {
        **SMALL["training"]["settings"],
        "num_steps_sampled_before_learning_starts": 60,
        "replay_buffer_config": {"type": "TransitionReplay", "capacity": 2000},
    }
    config = load_config(
        ROOT / "experiments/dqn/config.yaml",
        {**SMALL, "training": {**SMALL["training"], "envs_per_runner": 2, "settings": settings}},
    )
    init_ray(ROOT)
    try:
        algo = build_algo_config(config).build_algo()
        try:
            before = algo.learner_group.get_weights()
            for _ in range(2):
                result = algo.train()
            after = algo.learner_group.get_weights()
            (on_runner,) = algo.env_runner_group.foreach_env_runner(
                lambda runner: runner.module.get_state(inference_only=True), local_env_runner=False
            )
            stored = len(algo.local_replay_buffer)
            in_flight = algo.env_runner_group.num_in_flight_async_reqs("replay_sample")
        finally:
            algo.stop()
    finally:
        ray.shutdown()
    assert type(algo).__name__ == "ArrayReplayDQN"
    assert in_flight == 1  # the runner was already sampling the next round when train() returned
    sampled = result["env_runners"]["num_env_steps_sampled_lifetime"]
    assert sampled >= 240 and 0 < stored <= sampled
    assert result["learners"]["default_policy"]["num_module_steps_trained_lifetime"] > 0
    policy_before, policy_after = before["default_policy"], after["default_policy"]
    changed = [k for k in policy_after if not np.array_equal(policy_after[k], policy_before[k])]
    assert changed  # the learner trained
    for key, value in on_runner.items():  # the runner acts with the learner's newest weights
        np.testing.assert_array_equal(np.asarray(value), policy_after[key])


def test_learning_waits_for_a_refilled_replay_after_a_restore():
    """A restored run has sampled millions of steps but its replay starts empty (it is not saved):
    no update until the replay again holds num_steps_sampled_before_learning_starts transitions."""
    from types import SimpleNamespace

    from carla_env.rllib.replay import ArrayReplayDQN

    replay = TransitionReplay(1000, n_step=1, gamma=GAMMA)
    chunks, _, _ = episode_chunks(0, 50, 50, terminated=True, rng=np.random.default_rng(8))
    replay.add(chunks)

    class PastTheGate(Exception):
        pass

    def lifetime_steps(*_, **__):  # the first thing _train reads once it decides to learn
        raise PastTheGate

    restored = SimpleNamespace(
        local_replay_buffer=replay,
        config=SimpleNamespace(num_steps_sampled_before_learning_starts=100),
        metrics=SimpleNamespace(peek=lifetime_steps),
    )
    assert ArrayReplayDQN._train(restored, 4) is None  # 50 of 100: waits
    restored.config.num_steps_sampled_before_learning_starts = 5000  # more than the replay can hold
    replay.add(episode_chunks(1, 960, 960, terminated=True, rng=np.random.default_rng(9))[0])
    with pytest.raises(PastTheGate):  # full at 1,000: learning goes ahead
        ArrayReplayDQN._train(restored, 1)


@pytest.mark.parametrize(
    "settings, model, key",
    [
        ({"store_buffer_in_checkpoints": True}, {}, "settings.store_buffer_in_checkpoints"),
        ({"n_step": [1, 5]}, {}, "settings.n_step"),
        ({"n_step": True}, {}, "settings.n_step"),
        ({}, {"use_lstm": True}, "model.use_lstm"),
    ],
)
def test_what_the_array_replay_cannot_do_is_refused(settings, model, key):
    from carla_env.config import ConfigError, load_config
    from carla_env.rllib.algorithm import algorithm_class
    from tests.test_train import ROOT, TINY

    training = {**TINY["training"], "settings": {**TINY["training"]["settings"], **settings}}
    training["model"] = {**training["model"], **model}
    config = load_config(ROOT / "experiments/dqn/config.yaml", {"training": training})
    with pytest.raises(ConfigError) as refused:
        algorithm_class(config)
    assert str(refused.value).startswith(f"config error: training.{key}: ")
    assert "PrioritizedEpisodeReplayBuffer" in str(refused.value)


def test_train_refuses_it_in_one_line_and_writes_nothing(tmp_path):
    import subprocess
    import sys

    import yaml

    from tests.test_train import ROOT, tiny_config

    path = tiny_config(tmp_path)
    data = yaml.safe_load(path.read_text())
    data["training"]["settings"]["store_buffer_in_checkpoints"] = True
    path.write_text(yaml.safe_dump(data))
    proc = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), str(path), "--dir", str(tmp_path / "runs")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("config error: training.settings.store_buffer_in_checkpoints: ")
    assert not (tmp_path / "runs").exists()
