"""Kinematic bicycle with CARLA's control semantics, vectorised over controlled vehicles.

Frame: CARLA's (x forward, y right, yaw clockwise-positive seen from above), so a
positive steer (right) increases yaw. Reference point: the vehicle centre.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from carla_env.vehicle import MAX_WHEEL_ANGLE

MAX_LATERAL_ACCEL = 8.0  # m/s^2: tyre limit that caps the wheel angle at speed
MAX_ACCEL = 4.5  # m/s^2 at standstill, full throttle
TOP_SPEED = 50.0  # m/s: power limit -> acceleration falls to 0 here
MAX_REVERSE_SPEED = 8.0
MAX_BRAKE_DECEL = 8.0
HAND_BRAKE_DECEL = 5.0
ROLLING = 0.15  # m/s^2 rolling resistance
DRAG = 0.0004  # 1/m: aerodynamic drag coefficient (a = DRAG * v^2)


@njit(cache=True)
def step_bicycle(
    x, y, yaw, speed, wheelbase, throttle, steer, brake, reverse, hand_brake, dt, out_accel, out_yaw_rate
):
    """Advance every controlled vehicle by dt, in place (x, y, yaw, signed speed, acceleration, yaw rate)."""
    for i in range(x.shape[0]):
        th = min(max(throttle[i], 0.0), 1.0)
        br = min(max(brake[i], 0.0), 1.0)
        st = min(max(steer[i], -1.0), 1.0)
        v = speed[i]
        rev = reverse[i] > 0.5
        top = MAX_REVERSE_SPEED if rev else TOP_SPEED
        drive = (-1.0 if rev else 1.0) * th * MAX_ACCEL * min(max(1.0 - abs(v) / top, 0.0), 1.0)
        # Resistances and brakes shrink the speed's magnitude and never reverse it.
        resist = (
            ROLLING + DRAG * v * v + br * MAX_BRAKE_DECEL + (HAND_BRAKE_DECEL if hand_brake[i] > 0.5 else 0.0)
        )
        pushed = v + drive * dt
        nv = np.sign(pushed) * max(abs(pushed) - resist * dt, 0.0)
        # Wheel angle: steer is a fraction of CARLA's full lock (as in CARLA); the tyres' grip
        # (lateral-acceleration limit) caps the angle that turns the car at speed.
        v_mid = 0.5 * (v + nv)
        cap = np.arctan(MAX_LATERAL_ACCEL * wheelbase[i] / max(v_mid * v_mid, 1e-6))
        wheel = min(max(st * MAX_WHEEL_ANGLE, -cap), cap)
        beta = np.arctan(0.5 * np.tan(wheel))  # slip angle at the centre, halfway between the axles
        x[i] += v_mid * np.cos(yaw[i] + beta) * dt
        y[i] += v_mid * np.sin(yaw[i] + beta) * dt
        dyaw = v_mid * np.cos(beta) * np.tan(wheel) / wheelbase[i] * dt
        yaw[i] = (yaw[i] + dyaw + np.pi) % (2 * np.pi) - np.pi
        out_yaw_rate[i] = dyaw / dt
        out_accel[i] = (nv - v) / dt
        speed[i] = nv
