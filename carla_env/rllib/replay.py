"""DQN with its replay in flat numpy arrays: what RLlib 2.60's new-stack DQN spends most of a training
step on, done in a few vectorised operations.

RLlib's PrioritizedEpisodeReplayBuffer keeps Python episode objects: each sample of 256 builds 256
one-transition episodes with their n-step sums, and the learner connector turns them back into a batch
(20 ms for a 32-sample draw on the 2-core machine, docs/results: more than a GPU update takes).
TransitionReplay stores each observation once in a frame ring, each n-step transition as indices into
it, and samples a ready train batch (obs, new_obs, actions, rewards, terminateds, n_step, weights) by
proportional priority.
ArrayReplayDQN is RLlib's DQN with that buffer, and with remote runners sampling the next round while
the learner trains (RLlib's DQN waits for one, then the other). Runners, learner, loss, target network
and weight sync are RLlib's own.
"""

from __future__ import annotations

import time

import numpy as np
from ray.rllib.algorithms.dqn.dqn import DQN, calculate_rr_weights
from ray.rllib.core import DEFAULT_MODULE_ID
from ray.rllib.core.columns import Columns
from ray.rllib.core.learner.learner import ALL_MODULES
from ray.rllib.execution.rollout_ops import synchronous_parallel_sample
from ray.rllib.policy.sample_batch import MultiAgentBatch, SampleBatch
from ray.rllib.utils.metrics import (
    ENV_RUNNER_RESULTS,
    ENV_RUNNER_SAMPLING_TIMER,
    LEARNER_RESULTS,
    LEARNER_UPDATE_TIMER,
    NUM_AGENT_STEPS_SAMPLED_LIFETIME,
    NUM_ENV_STEPS_SAMPLED_LIFETIME,
    REPLAY_BUFFER_ADD_DATA_TIMER,
    REPLAY_BUFFER_SAMPLE_TIMER,
    REPLAY_BUFFER_UPDATE_PRIOS_TIMER,
    SYNCH_WORKER_WEIGHTS_TIMER,
    TD_ERROR_KEY,
    TIMERS,
)
from ray.rllib.utils.numpy import convert_to_numpy

SAMPLE_TAG = "replay_sample"  # the runners' sample() requests in flight


class TransitionReplay:
    """Proportional prioritised n-step replay of single-agent episode chunks, in numpy arrays.

    Observations live in a ring of frames (one per env step plus each episode's last); a transition
    holds the frame counters of its observation and of the one n steps later, so nothing is copied
    twice. Chunks of a running episode arrive one sample call at a time: the last n-1 steps of a
    chunk wait (per episode id) until the steps after them, or the episode's end, arrive.
    A truncated episode bootstraps from its last observation; a terminated one does not.
    """

    def __init__(
        self, capacity: int, *, n_step: int, gamma: float, alpha: float = 0.6, seed: int | None = None
    ):
        if capacity < 1 or n_step < 1:
            raise ValueError(f"capacity ({capacity}) and n_step ({n_step}) must be at least 1")
        self.capacity, self.n_step, self.gamma, self.alpha = capacity, n_step, gamma, alpha
        # Each episode adds one frame past its steps; a quarter more frames than transitions covers
        # episodes as short as 4 steps before a transition's frames could be overwritten.
        self.frame_capacity = capacity + capacity // 4 + 1
        self.frames: np.ndarray | None = None  # allocated at the first add, from the obs' shape and dtype
        self.frames_written = 0
        self.obs_frame = np.zeros(capacity, np.int64)  # frame counters, not ring slots
        self.next_frame = np.zeros(capacity, np.int64)
        self.actions = np.zeros(capacity, np.int64)
        self.returns = np.zeros(capacity, np.float32)
        self.steps = np.zeros(capacity, np.int64)  # n of the n-step return (fewer at an episode's end)
        self.terminated = np.zeros(capacity, bool)
        self.priority = np.zeros(capacity, np.float64)  # priority ** alpha; 0 = empty or stale
        self.max_priority = 1.0
        self.added = 0  # transitions ever added
        # Episode id -> the timestep its next chunk starts at, and its steps waiting for that chunk
        # (their frame counters, actions and rewards).
        self.open: dict[str, tuple[int, np.ndarray, np.ndarray, np.ndarray]] = {}
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return min(self.added, self.capacity)

    def add(self, episodes) -> None:
        for episode in episodes:
            self._add_chunk(episode)

    def _write_frames(self, observations: np.ndarray) -> np.ndarray:
        if self.frames is None:
            self.frames = np.zeros((self.frame_capacity, *observations.shape[1:]), observations.dtype)
        counters = self.frames_written + np.arange(len(observations))
        self.frames[counters % self.frame_capacity] = observations
        self.frames_written += len(observations)
        return counters

    def _add_chunk(self, episode) -> None:
        observations = np.asarray(episode.get_observations())
        actions = np.asarray(episode.get_actions(), np.int64)
        rewards = np.asarray(episode.get_rewards(), np.float32)
        waiting = self.open.pop(episode.id_, None)
        if waiting is not None and waiting[0] != episode.t_started:
            waiting = None  # a chunk between was lost (e.g. with a failed runner): never splice across it
        if waiting is None:
            frames = self._write_frames(observations)
        else:  # a successor chunk: its first observation is the last one of the chunk before
            frames = np.concatenate([waiting[1], self._write_frames(observations[1:])])
            actions = np.concatenate([waiting[2], actions])
            rewards = np.concatenate([waiting[3], rewards])
        steps = len(actions)
        done = episode.is_terminated or episode.is_truncated
        n = self.n_step
        # Transitions whose n-th next observation is here, or all of them once the episode has ended.
        ready = steps if done else max(steps - n + 1, 0)
        if not done:
            start = ready
            self.open[episode.id_] = (episode.t, frames[start:], actions[start:], rewards[start:])
        if ready == 0:
            return
        t = np.arange(ready)
        span = np.minimum(n, steps - t)
        returns = np.zeros(ready, np.float32)
        for k in range(n):
            inside = k < span
            returns[inside] += self.gamma**k * rewards[t[inside] + k]
        self._append(
            frames[t],
            frames[t + span],
            actions[:ready],
            returns,
            span,
            episode.is_terminated & (t + span == steps),
        )

    def _append(self, obs_frame, next_frame, actions, returns, span, terminated) -> None:
        slots = (self.added + np.arange(len(actions))) % self.capacity
        self.obs_frame[slots] = obs_frame
        self.next_frame[slots] = next_frame
        self.actions[slots] = actions
        self.returns[slots] = returns
        self.steps[slots] = span
        self.terminated[slots] = terminated
        self.priority[slots] = self.max_priority
        self.added += len(actions)

    def sample(self, size: int, beta: float = 0.4) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """A train batch of `size` transitions drawn by priority, and their slots (for
        update_priorities). `weights` are the importance weights (N P(i)) ** -beta over the largest
        any stored transition could get, as RLlib's prioritised replay normalises them."""
        self._drop_stale()
        priority = self.priority[: len(self)]  # slots past len() were never written
        cumulative = np.cumsum(priority)
        total = cumulative[-1] if len(cumulative) else 0.0
        if total <= 0 and not len(self):
            raise ValueError("sample() from an empty replay buffer")
        if total <= 0:
            raise ValueError(
                f"replay_buffer_config.capacity: {self.capacity} transitions is less than one sampling round "
                "writes (every stored transition's frames were overwritten); raise it"
            )
        slots = np.searchsorted(cumulative, self.rng.uniform(0, total, size), side="right")
        slots = np.minimum(slots, len(self) - 1)
        stored = priority > 0
        count, lowest = np.count_nonzero(stored), priority[stored].min()
        weights = (count * self.priority[slots] / total) ** -beta / (count * lowest / total) ** -beta
        batch = {
            Columns.OBS: self.frames[self.obs_frame[slots] % self.frame_capacity],
            Columns.NEXT_OBS: self.frames[self.next_frame[slots] % self.frame_capacity],
            Columns.ACTIONS: self.actions[slots],
            Columns.REWARDS: self.returns[slots],
            Columns.TERMINATEDS: self.terminated[slots],
            "n_step": self.steps[slots].astype(np.float32),
            "weights": weights.astype(np.float32),
        }
        return batch, slots

    def _drop_stale(self) -> None:
        """Transitions whose frames have been overwritten (only possible after very short episodes)
        are never drawn."""
        oldest_frame = self.frames_written - self.frame_capacity
        if oldest_frame > 0:
            stale = (self.obs_frame < oldest_frame) & (self.priority > 0)
            self.priority[stale] = 0.0
            # Episodes that never went on (a runner restarted or reset its envs) stop waiting here.
            for key in [k for k, (_, frames, _, _) in self.open.items() if frames[0] < oldest_frame]:
                del self.open[key]

    def update_priorities(self, slots: np.ndarray, td_errors: np.ndarray) -> None:
        priority = (np.abs(td_errors) + 1e-6) ** self.alpha
        self.priority[slots] = priority
        self.max_priority = max(self.max_priority, float(priority.max()))


class ArrayReplayDQN(DQN):
    """RLlib's DQN, its replay a TransitionReplay (replay_buffer_config.type: TransitionReplay), its
    remote runners' sampling overlapped with learning: they act with weights one round old."""

    def _create_local_replay_buffer_if_necessary(self, config):
        settings = config["replay_buffer_config"]
        return TransitionReplay(
            int(settings["capacity"]),
            n_step=int(config["n_step"]),
            gamma=float(config["gamma"]),
            alpha=float(settings.get("alpha", 0.6)),
            seed=config.get("seed"),
        )

    def _training_step_new_api_stack(self):
        """Remote runners sample the next round while the learner trains on the replay; with no
        remote runner, the local one samples first, as in RLlib's DQN."""
        store_weight, sample_and_train_weight = calculate_rr_weights(self.config)
        group = self.env_runner_group
        overlap = group.num_remote_env_runners() > 0
        if not overlap:
            for _ in range(store_weight):
                self._store(*self._sample_locally())
        elif not group.num_in_flight_async_reqs(SAMPLE_TAG):
            self._launch_sampling()  # the first round (or one lost to a runner's failure)
        learner_results = self._train(sample_and_train_weight)
        if overlap:
            for round_ in range(store_weight):
                if round_:
                    self._launch_sampling()
                self._store(*self._collect_sampling())
        if learner_results:
            with self.metrics.log_time((TIMERS, SYNCH_WORKER_WEIGHTS_TIMER)):
                group.sync_weights(
                    from_worker_or_learner_group=self.learner_group,
                    policies=set(learner_results[0].keys()) - {ALL_MODULES},
                    global_vars=None,
                    inference_only=True,
                )
        if overlap:
            self._launch_sampling()  # runs through the next step's updates

    def _sample_locally(self):
        with self.metrics.log_time((TIMERS, ENV_RUNNER_SAMPLING_TIMER)):
            return synchronous_parallel_sample(
                worker_set=self.env_runner_group,
                concat=True,
                sample_timeout_s=self.config.sample_timeout_s,
                _uses_new_env_runners=True,
                _return_metrics=True,
            )

    def _launch_sampling(self) -> None:
        self.env_runner_group.foreach_env_runner_async(
            lambda runner: (runner.sample(), runner.get_metrics()), tag=SAMPLE_TAG
        )

    def _collect_sampling(self):
        """The launched round's episodes and runner metrics: waits for every runner, up to
        sample_timeout_s (a runner that fails is dropped from this round, as in RLlib's sampling)."""
        group, results = self.env_runner_group, []
        deadline = time.monotonic() + (self.config.sample_timeout_s or float("inf"))
        with self.metrics.log_time((TIMERS, ENV_RUNNER_SAMPLING_TIMER)):
            while group.num_in_flight_async_reqs(SAMPLE_TAG) and time.monotonic() < deadline:
                results += group.fetch_ready_async_reqs(tags=SAMPLE_TAG, timeout_seconds=1.0)
        episodes = [episode for _, (chunk, _) in results for episode in chunk]
        return episodes, [metrics for _, (_, metrics) in results]

    def _store(self, episodes, env_runner_results) -> None:
        self.metrics.aggregate(env_runner_results, key=ENV_RUNNER_RESULTS)
        with self.metrics.log_time((TIMERS, REPLAY_BUFFER_ADD_DATA_TIMER)):
            self.local_replay_buffer.add(episodes)

    def _train(self, updates: int) -> list | None:
        """`updates` learner updates on prioritised samples, once the replay holds
        num_steps_sampled_before_learning_starts transitions (again after --restore: it is not saved)."""
        replay = self.local_replay_buffer
        if len(replay) < max(1, min(self.config.num_steps_sampled_before_learning_starts, replay.capacity)):
            return None
        sampled = self.metrics.peek((ENV_RUNNER_RESULTS, NUM_ENV_STEPS_SAMPLED_LIFETIME), default=0)
        beta = self.config.replay_buffer_config.get("beta", 0.4)
        timesteps = {
            NUM_ENV_STEPS_SAMPLED_LIFETIME: sampled,
            NUM_AGENT_STEPS_SAMPLED_LIFETIME: self.metrics.peek(
                (ENV_RUNNER_RESULTS, NUM_AGENT_STEPS_SAMPLED_LIFETIME), default=0
            ),
        }
        for _ in range(updates):
            with self.metrics.log_time((TIMERS, REPLAY_BUFFER_SAMPLE_TIMER)):
                batch, slots = replay.sample(self.config.total_train_batch_size, beta)
            with self.metrics.log_time((TIMERS, LEARNER_UPDATE_TIMER)):
                learner_results = self.learner_group.update(
                    batch=MultiAgentBatch({DEFAULT_MODULE_ID: SampleBatch(batch)}, env_steps=len(slots)),
                    timesteps=timesteps,
                )
                # TD errors are per sample: kept out of the logged results, used for the priorities.
                td_errors = np.concatenate(
                    [
                        convert_to_numpy(res[DEFAULT_MODULE_ID].pop(TD_ERROR_KEY).peek())
                        for res in learner_results
                        if TD_ERROR_KEY in res.get(DEFAULT_MODULE_ID, {})
                    ]
                )
                self.metrics.aggregate(learner_results, key=LEARNER_RESULTS)
            with self.metrics.log_time((TIMERS, REPLAY_BUFFER_UPDATE_PRIOS_TIMER)):
                replay.update_priorities(slots, td_errors)
        return learner_results
