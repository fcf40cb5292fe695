"""Smoke test for a machine with CARLA: launch a server, load a town, spawn the hero and 20 vehicles,
tick 200 frames with the BEV, close; prints FPS, tick latency and restarts.

    python -m carla_env.carla_server.smoke [--town Town01] [--vehicles 20] [--frames 200]   # make carla-smoke
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--town", default="Town01")
    p.add_argument("--vehicles", type=int, default=20)
    p.add_argument("--frames", type=int, default=200)
    p.add_argument("--carla-root", default=os.environ.get("CARLA_ROOT"))
    args = p.parse_args(argv)
    if not args.carla_root:
        print(
            "carla-smoke needs a CARLA install: set CARLA_ROOT to the CARLA 0.9.16 release folder",
            file=sys.stderr,
        )
        return 2
    import carla

    from carla_env.carla_server.core import CarlaCore
    from carla_env.config import BirdviewConfig, ConfigError, SimulatorConfig
    from carla_env.sensors.factory import make_sensor

    try:
        config = SimulatorConfig(
            backend="carla",
            town=args.town,
            timestep=0.05,
            traffic={"vehicles": args.vehicles},
            carla={"carla_root": args.carla_root},
        )
    except (ValueError, ConfigError) as e:
        print(f"carla-smoke: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    core = CarlaCore(config)
    try:
        launched = time.perf_counter() - t0
        core.reset(seed=0)
        bev = make_sensor("birdview", BirdviewConfig(), core, 0.05)
        t1 = time.perf_counter()
        for _ in range(args.frames):
            frame = core.tick(carla.VehicleControl(throttle=0.3))
            bev.read(frame)
        seconds = time.perf_counter() - t1
        out = {
            "town": args.town,
            "server_version": core.client.get_server_version(),
            "launch_and_load_s": round(launched, 1),
            "frames": args.frames,
            "fps_with_bev": round(args.frames / seconds, 1),
            "vehicles": len(core.world.get_actors().filter("vehicle.*")),
            **{k: round(v, 4) if isinstance(v, float) else v for k, v in core.health.items()},
        }
        print(json.dumps(out))
    finally:
        core.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
