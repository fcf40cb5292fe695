"""Kinematic bicycle with CARLA's control semantics, vectorised over controlled vehicles.

Frame: CARLA's (x forward, y right, yaw clockwise-positive seen from above), so a
positive steer (right) increases yaw. Reference point: the vehicle centre.
"""

from __future__ import annotations

import numpy as np

MAX_WHEEL_ANGLE = np.radians(70.0)  # CARLA's default max_steer_angle for front wheels
MAX_LATERAL_ACCEL = 8.0  # m/s^2: tyre limit that caps the wheel angle at speed
MAX_ACCEL = 4.5  # m/s^2 at standstill, full throttle
TOP_SPEED = 50.0  # m/s: power limit -> acceleration falls to 0 here
MAX_REVERSE_SPEED = 8.0
MAX_BRAKE_DECEL = 8.0
HAND_BRAKE_DECEL = 5.0
ROLLING = 0.15  # m/s^2 rolling resistance
DRAG = 0.0004  # 1/m: aerodynamic drag coefficient (a = DRAG * v^2)


def step_bicycle(
    x: np.ndarray,
    y: np.ndarray,
    yaw: np.ndarray,
    speed: np.ndarray,  # signed: negative when reversing
    wheelbase: np.ndarray,
    throttle: np.ndarray,
    steer: np.ndarray,
    brake: np.ndarray,
    reverse: np.ndarray,
    hand_brake: np.ndarray,
    dt: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Advance by dt; returns x, y, yaw, speed, acceleration (signed, along heading)."""
    throttle = np.clip(throttle, 0.0, 1.0)
    brake = np.clip(brake, 0.0, 1.0)
    steer = np.clip(steer, -1.0, 1.0)
    direction = np.where(reverse, -1.0, 1.0)
    v_abs = np.abs(speed)

    top = np.where(reverse, MAX_REVERSE_SPEED, TOP_SPEED)
    drive = direction * throttle * MAX_ACCEL * np.clip(1.0 - v_abs / top, 0.0, 1.0)
    # Resistances and brakes shrink the speed's magnitude and never reverse it.
    resist = ROLLING + DRAG * speed * speed + brake * MAX_BRAKE_DECEL + hand_brake * HAND_BRAKE_DECEL
    pushed = speed + drive * dt
    new_speed = np.sign(pushed) * np.maximum(np.abs(pushed) - resist * dt, 0.0)

    # Wheel angle: CARLA's full lock, capped by the lateral-acceleration limit at speed.
    v_mid = 0.5 * (speed + new_speed)
    cap = np.arctan(MAX_LATERAL_ACCEL * wheelbase / np.maximum(v_mid * v_mid, 1e-6))
    wheel = steer * np.minimum(MAX_WHEEL_ANGLE, cap)
    beta = np.arctan(0.5 * np.tan(wheel))  # slip angle at the centre (centre halfway between axles)
    heading = yaw + beta
    new_x = x + v_mid * np.cos(heading) * dt
    new_y = y + v_mid * np.sin(heading) * dt
    new_yaw = yaw + v_mid * np.cos(beta) * np.tan(wheel) / wheelbase * dt
    new_yaw = np.remainder(new_yaw + np.pi, 2 * np.pi) - np.pi
    accel = (new_speed - speed) / dt
    return new_x, new_y, new_yaw, new_speed, accel
