"""The reference drivers' one pure-pursuit law: CARLA's steer sign convention and its limits."""

import math

import carla
import pytest

from carla_env.agents import MAX_WHEEL_ANGLE, pure_pursuit_steer


def pose(x=0.0, y=0.0, yaw=0.0) -> carla.Transform:
    return carla.Transform(carla.Location(x, y, 0.0), carla.Rotation(yaw=yaw))


def test_straight_ahead_is_no_steer_and_sides_are_symmetric():
    assert pure_pursuit_steer(pose(), 10.0, 0.0, 2.88) == 0.0
    right, left = pure_pursuit_steer(pose(), 10.0, 2.0, 2.88), pure_pursuit_steer(pose(), 10.0, -2.0, 2.88)
    # CARLA is left-handed: +y is to the right of a car heading +x, and positive steer turns right.
    assert right > 0 and left == pytest.approx(-right)


def test_the_arc_through_the_target_and_the_clip():
    # Target at 10 m and 30 degrees: the arc's wheel angle is atan(2 L sin(alpha) / d).
    target = (10 * math.cos(math.radians(30)), 10 * math.sin(math.radians(30)))
    wheel = math.atan(2 * 2.88 * math.sin(math.radians(30)) / 10)
    assert pure_pursuit_steer(pose(), *target, 2.88) == pytest.approx(wheel / MAX_WHEEL_ANGLE)
    # The heading counts: the same target seen from a car already facing it needs no steer.
    assert pure_pursuit_steer(pose(yaw=30.0), *target, 2.88) == pytest.approx(0.0, abs=1e-9)
    assert pure_pursuit_steer(pose(), 0.1, 1.0, 2.88) == 1.0  # beyond full lock: clipped
