"""Training progress for a person watching: a line per iteration, and one at least every
`progress_seconds` while an iteration runs (a DQN iteration on a CPU can take minutes), with steps,
rate and an ETA for the stop criterion; checkpoints by wall time; a graceful stop on Ctrl-C.

Env steps are counted where they happen: every env runner (a Ray worker, local or on a cluster node)
adds its steps to one named `StepCounter` actor every few seconds (`count_env_step`, an RLlib
`on_episode_step` callback), and a reporter thread in the driver reads it. Both classes are
importable, so a restored run (Tune unpickles its callbacks) keeps them.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import deque

import ray
from ray import tune

COUNTER_NAME = "carla_env_step_counter"
FLUSH_S = 2.0  # how often an env runner sends its step count
# Set by train.py's SIGINT handler: checkpoint at the end of the current iteration, then stop.
stop_requested = threading.Event()


@ray.remote(num_cpus=0)
class StepCounter:
    def __init__(self):
        self.steps = 0

    def add(self, steps: int) -> None:
        self.steps += steps

    def total(self) -> int:
        return self.steps


class _RunnerSteps:
    """This process's unsent env steps (one per env runner process, shared by its sub-envs)."""

    pending = 0
    sent_at = 0.0
    counter = None
    looked_up_at = -1e9


def count_env_step(**_) -> None:
    """RLlib on_episode_step callback: one env step; sent to the StepCounter every FLUSH_S seconds."""
    s = _RunnerSteps
    s.pending += 1
    now = time.monotonic()
    if now - s.sent_at < FLUSH_S:
        return
    s.sent_at = now
    if s.counter is None and now - s.looked_up_at > 30.0:  # absent outside train.py: look again rarely
        s.looked_up_at = now
        try:
            s.counter = ray.get_actor(COUNTER_NAME)
        except ValueError:
            return
    if s.counter is not None:
        s.counter.add.remote(s.pending)
        s.pending = 0


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 86400:
        return f"{seconds // 86400}d {seconds % 86400 // 3600}h"
    if seconds >= 3600:
        return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m {seconds % 60:02d}s"


class ProgressReporter(tune.Callback):
    def __init__(
        self,
        stop_timesteps: int | None,
        stop_iterations: int | None,
        progress_seconds: float = 30.0,
        checkpoint_minutes: float = 5.0,
        stop_minutes: float | None = None,
    ):
        self.stop_timesteps = stop_timesteps
        self.stop_minutes = stop_minutes
        self.stop_iterations = stop_iterations
        self.progress_seconds = progress_seconds
        self.checkpoint_minutes = checkpoint_minutes
        self._init_runtime()

    def _init_runtime(self) -> None:
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._thread = None
        self._counter = None
        self._start = self._last_line = self._last_checkpoint = time.monotonic()
        self._iter_start = self._start
        self._iteration = 0
        self._session_iterations = 0  # a restored run starts at its checkpoint's iteration
        self._lifetime_at_result = None  # env steps the last result reported, and the counter then
        self._counted_at_result = 0
        self._samples = deque(maxlen=128)  # (time, counted steps) every few seconds, for the rate
        self._stopped_at = None
        self._said_long = False
        self._trained_s = 0.0  # the run's training time (Tune's time_total_s) at the last result

    # Tune pickles its callbacks with the experiment (restore unpickles them): no thread, lock or actor.
    def __getstate__(self):
        keep = ("stop_timesteps", "stop_iterations", "progress_seconds", "checkpoint_minutes", "stop_minutes")
        return {k: self.__dict__[k] for k in keep}

    def __setstate__(self, state):
        self.__dict__.update({"stop_minutes": None, **state})
        self._init_runtime()

    # -- Tune hooks -------------------------------------------------------------------------------
    def setup(self, **info):
        self._counter = StepCounter.options(name=COUNTER_NAME, get_if_exists=True).remote()
        self._start = self._last_line = self._last_checkpoint = self._iter_start = time.monotonic()
        self._thread = threading.Thread(target=self._report_loop, name="progress", daemon=True)
        self._thread.start()

    def on_trial_result(self, iteration, trials, trial, result, **info):
        counted = self._counted()
        now = time.monotonic()
        env = result.get("env_runners", {})
        steps = int(result.get("num_env_steps_sampled_lifetime", 0))
        rate = env.get("num_env_steps_sampled", 0) / max(result.get("time_this_iter_s", 0.0), 1e-9)
        ret = env.get("episode_return_mean", float("nan"))
        completion = env.get("route_completion", float("nan"))
        with self._lock:
            self._iteration = int(result.get("training_iteration", 0))
            self._session_iterations += 1
            self._iter_start = now
            self._lifetime_at_result, self._counted_at_result = steps, counted
            self._trained_s = float(result.get("time_total_s", self._trained_s))
            eta = self._eta(steps, now)
            self._print(
                f"iter {self._iteration:4d}  steps {steps:8d}  {rate:7.1f} steps/s  "
                f"return {ret:8.2f}  route {completion:6.1%}{eta}"
            )
        if result.get("time_this_iter_s", 0.0) > self.checkpoint_minutes * 60 and not self._said_long:
            self._said_long = True
            self._print(
                f"note: an iteration took {_duration(result['time_this_iter_s'])}; checkpoints by time (and a "
                "Ctrl-C stop) wait for an iteration's end: lower training.reporting."
                "min_sample_timesteps_per_iteration for shorter iterations"
            )
        # Tune reads this key after its callbacks ran: checkpoint by wall time, and before a Ctrl-C stop.
        if stop_requested.is_set() or now - self._last_checkpoint >= self.checkpoint_minutes * 60:
            result["should_checkpoint"] = True

    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
        self._last_checkpoint = time.monotonic()
        if stop_requested.is_set() and self._stopped_at is None:
            self._stopped_at = checkpoint.path
            self._print(f"checkpoint written: {checkpoint.path}; stopping")
            # Tune's own graceful end (it keeps SIGUSR1 for that): state saved, the trial left resumable.
            os.kill(os.getpid(), signal.SIGUSR1)

    def on_experiment_end(self, trials, **info):
        self._done.set()

    # -- the reporter thread ----------------------------------------------------------------------
    def _report_loop(self) -> None:
        while not self._done.wait(min(5.0, self.progress_seconds)):
            counted = self._counted()  # sampled every few seconds, for the rate
            now = time.monotonic()
            if now - self._last_line < self.progress_seconds:
                continue
            with self._lock:
                since_result = counted - self._counted_at_result
                if self._lifetime_at_result is None:
                    steps = f"steps {counted:8d} (this session)"
                    lifetime = counted
                else:
                    lifetime = self._lifetime_at_result + since_result
                    steps = f"steps {lifetime:8d}"
                rate = self._rate()
                waiting = "waiting for the first env steps" if counted == 0 else f"{rate:7.1f} steps/s"
                self._print(
                    f"   ... {steps}  {waiting}  iteration {self._iteration + 1} running for "
                    f"{_duration(now - self._iter_start)}{self._eta(lifetime, now)}"
                )

    def _counted(self) -> int:
        """Env steps sampled in this session so far (the counter's total); also kept for the rate."""
        if self._counter is None:
            return 0
        try:
            counted = ray.get(self._counter.total.remote(), timeout=10)
        except Exception:  # Ray shutting down: keep the last figure
            counted = self._samples[-1][1] if self._samples else 0
        with self._lock:
            self._samples.append((time.monotonic(), counted))
        return counted

    def _rate(self) -> float:
        """Env steps/s over the last few minutes (the current pace, not the fast pre-learning start)."""
        if not self._samples:
            return 0.0
        now = self._samples[-1][0]
        # From the last sample before stepping began (start-up is not pace), over at most 5 minutes.
        recent = [s for s in self._samples if now - s[0] <= 300.0]
        started = [k for k, s in enumerate(recent) if s[1] > 0]
        if not started:
            return 0.0
        (t0, c0), (t1, c1) = recent[max(started[0] - 1, 0)], recent[-1]
        return (c1 - c0) / (t1 - t0) if t1 - t0 >= 5.0 and c1 > c0 else 0.0

    def _eta(self, steps: int, now: float) -> str:
        """The ETA to whichever stop comes first (steps, iterations or training minutes), once it can be
        estimated."""
        etas = []
        if self.stop_minutes:
            trained = self._trained_s + (now - self._iter_start)
            etas.append(
                (max(self.stop_minutes * 60 - trained, 0.0), f"{self.stop_minutes:g} training minutes")
            )
        if self.stop_timesteps:
            rate = self._rate()
            if rate > 0:
                etas.append((max(self.stop_timesteps - steps, 0) / rate, f"{self.stop_timesteps} steps"))
        if self.stop_iterations and self._session_iterations:
            per_iter = (now - self._start) / self._session_iterations
            left = max(self.stop_iterations - self._iteration, 0)
            etas.append((left * per_iter, f"iteration {self.stop_iterations}"))
        if not etas:
            stops = [f"{self.stop_timesteps} steps"] if self.stop_timesteps else []
            stops += [f"iteration {self.stop_iterations}"] if self.stop_iterations else []
            return f"  ETA (no rate yet) to {' or '.join(stops)}" if stops else ""
        seconds, stop = min(etas)
        return f"  ETA {_duration(seconds)} to {stop}"

    def _print(self, line: str) -> None:
        print(line, flush=True)
        self._last_line = time.monotonic()
