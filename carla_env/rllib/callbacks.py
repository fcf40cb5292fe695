"""RLlib callbacks: the env's driving metrics, logged at episode end (averaged by the MetricsLogger)."""

from __future__ import annotations

from ray.rllib.callbacks.callbacks import RLlibCallback

METRICS = (
    "route_completion",
    "collisions_per_km",
    "lane_invasions_per_km",
    "off_road_seconds",
    "mean_speed",
    "driving_score",
)


class DrivingMetricsCallback(RLlibCallback):
    def on_episode_end(self, *, episode, metrics_logger=None, **kwargs) -> None:
        info = episode.get_infos(-1)
        if metrics_logger is None or not isinstance(info, dict):
            return
        for key in METRICS:
            if key in info:
                metrics_logger.log_value(key, float(info[key]), reduce="mean", window=100)
