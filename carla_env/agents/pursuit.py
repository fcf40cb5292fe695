"""Pure pursuit: the steering both reference drivers use, in CARLA's normalised steer."""

from __future__ import annotations

import math

import numpy as np

from carla_env.vehicle import MAX_WHEEL_ANGLE


def pure_pursuit_steer(transform, target_x: float, target_y: float, wheelbase: float) -> float:
    """Steer in [-1, 1] that puts a car at `transform` with this wheelbase on an arc through the target."""
    dx, dy = target_x - transform.location.x, target_y - transform.location.y
    alpha = math.atan2(dy, dx) - math.radians(transform.rotation.yaw)
    alpha = (alpha + math.pi) % (2 * math.pi) - math.pi
    wheel = math.atan2(2.0 * wheelbase * math.sin(alpha), max(math.hypot(dx, dy), 1e-3))
    return float(np.clip(wheel / MAX_WHEEL_ANGLE, -1.0, 1.0))
