"""Smoke test for a machine with CARLA, through the fault paths a mock cannot show.

    python -m carla_env.carla_server.smoke [--town Town01] [--vehicles 20] [--frames 200]   # make carla-smoke

Launches two envs' servers at once on one slot (as RLlib builds the envs of one runner: they must get
their own ports), loads the town, spawns the hero and traffic on each, and drives both with the BEV,
a collision and a lane-invasion sensor, each env's CARLA client in its own child process (none in
this one). Halfway (--kill-at) the first server's engine is killed with SIGKILL, at three quarters
(--kill-client-at) the first env's client process: each time the run must go on, on a relaunched
server and client. Prints one JSON line (FPS, tick latency, restarts, collision and lane-invasion
counts per env); exits 1 with a one-line reason if a check fails.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

EVENT_SENSORS = {"collisions": "sensor.other.collision", "lane_invasions": "sensor.other.lane_invasion"}


class OneLineParser(argparse.ArgumentParser):
    def error(self, message: str):
        self.exit(2, f"carla-smoke: {message}\n")


def parse_args(argv):
    p = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--town", default="Town01")
    p.add_argument("--vehicles", type=int, default=20)
    p.add_argument("--frames", type=int, default=200)
    p.add_argument("--envs", type=int, default=2, help="envs of one runner (one slot), launched at once")
    p.add_argument(
        "--kill-at",
        type=int,
        help="frame at which the first engine gets SIGKILL (default frames/2; -1: never)",
    )
    p.add_argument(
        "--kill-client-at",
        type=int,
        help="frame at which the first env's client process gets SIGKILL (default 3*frames/4; -1: never)",
    )
    p.add_argument("--carla-root", default=os.environ.get("CARLA_ROOT"))
    args = p.parse_args(argv)
    if args.frames < 1:
        p.error(f"--frames {args.frames}: give at least 1")
    if args.vehicles < 0:
        p.error(f"--vehicles {args.vehicles}: give 0 or more")
    if args.envs < 1:
        p.error(f"--envs {args.envs}: give at least 1")
    args.kill_at = args.frames // 2 if args.kill_at is None else args.kill_at
    if args.kill_at >= args.frames:
        p.error(f"--kill-at {args.kill_at}: must be below --frames {args.frames} (or -1: never)")
    if args.kill_client_at is None:  # three quarters in, where that is a frame of its own
        args.kill_client_at = 3 * args.frames // 4 if 3 * args.frames // 4 != args.kill_at else -1
    if args.kill_client_at >= args.frames or (
        args.kill_client_at >= 0 and args.kill_client_at == args.kill_at
    ):
        p.error(
            f"--kill-client-at {args.kill_client_at}: must be below --frames {args.frames} and differ "
            "from --kill-at (or -1: never)"
        )
    if not args.carla_root:
        p.exit(2, "carla-smoke needs a CARLA install: set CARLA_ROOT to the CARLA 0.9.16 release folder\n")
    if not (Path(args.carla_root) / "CarlaUE4.sh").is_file():
        p.exit(
            2,
            f"carla-smoke: no CarlaUE4.sh in {args.carla_root}; set CARLA_ROOT to the CARLA release folder\n",
        )
    return args


def kill_engine(server) -> list[int]:
    """SIGKILL the engine behind the launcher script (every process of the server's group but the
    script; the script itself when it exec'd the engine)."""
    group = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getpgid(int(entry.name)) == server.pid:
                    group.append(int(entry.name))
            except OSError:
                continue
    engine = [pid for pid in group if pid != server.pid] or [server.pid]
    for pid in engine:
        os.kill(pid, signal.SIGKILL)
    return engine


class SmokeEnv:
    """One env's core with the BEV and the two event sensors, remounted after a relaunch."""

    def __init__(self, config, slot: int, core_factory) -> None:
        self.core = core_factory(config, "vehicle.tesla.model3", slot=slot)
        self.sensors: dict = {}
        self.counts = dict.fromkeys(EVENT_SENSORS, 0)
        self.frames = 0
        self.restarted_at: list[int] = []
        self.last_driven = -1  # the last frame index driven without a restart

    def reset(self, seed: int) -> None:
        from carla_env.config import BirdviewConfig, SensorConfig
        from carla_env.sensors.factory import make_sensor

        for sensor in self.sensors.values():
            sensor.destroy()
        self.core.reset(seed=seed)
        self.sensors = {"birdview": make_sensor("birdview", BirdviewConfig(), self.core, 0.05)}
        for key, kind in EVENT_SENSORS.items():
            self.sensors[key] = make_sensor(key, SensorConfig(type=kind), self.core, 0.05)

    def step(self, k: int, control) -> None:
        from carla_env.simulator import SimulatorRestarted

        try:
            frame = self.core.tick(control)
            data = {name: sensor.read(frame) for name, sensor in self.sensors.items()}
        except SimulatorRestarted:  # what the env does: end the episode, reset on the new server
            self.restarted_at.append(k)
            self.sensors = {}
            self.reset(seed=k)
            return
        self.frames += 1
        self.last_driven = k
        for key in EVENT_SENSORS:
            self.counts[key] += len(data[key][1])


def run(args, core_factory=None) -> tuple[dict, list[str]]:
    """The smoke's drive and its checks; `core_factory(config, blueprint, slot=)` builds a core
    (default: the one the config asks for, its client in a child process)."""
    import carla

    from carla_env.carla_server.isolated import make_carla_core
    from carla_env.config import SimulatorConfig

    core_factory = core_factory or make_carla_core

    config = SimulatorConfig(
        backend="carla",
        town=args.town,
        timestep=0.05,
        traffic={"vehicles": args.vehicles},
        carla={"carla_root": args.carla_root},
    )
    envs: list[SmokeEnv] = []
    errors: list[BaseException] = []

    def launch():  # RLlib gives every env of a runner the same slot
        try:
            env = SmokeEnv(config, slot=0, core_factory=core_factory)
            envs.append(env)
            env.reset(seed=len(envs))
        except BaseException as e:  # noqa: BLE001 - reported as the smoke's failure
            errors.append(e)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=launch) for _ in range(args.envs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    launched = time.perf_counter() - t0
    try:
        if errors:
            return {}, [f"launching {args.envs} envs of one slot at once: {errors[0]}"]
        # A slight steer: the hero crosses lane markings and, in time, hits something.
        control = carla.VehicleControl(throttle=0.5, steer=0.03)
        killed: list[int] = []
        clients = [e.core.client_process.pid for e in envs]
        killed_client = None
        t1 = time.perf_counter()
        for k in range(args.frames):
            if k == args.kill_at:
                killed = kill_engine(envs[0].core.server)
            if k == args.kill_client_at:  # as a LibCarla abort would end it
                killed_client = envs[0].core.client_process.pid
                os.kill(killed_client, signal.SIGKILL)
            for env in envs:
                env.step(k, control)
        seconds = time.perf_counter() - t1
        out = {
            "town": args.town,
            "client_version": envs[0].core.client_info()["client_version"],  # the server's: checked at launch
            "launch_and_load_s": round(launched, 1),
            "frames": args.frames,
            "fps_with_bev_per_env": round(sum(e.frames for e in envs) / len(envs) / seconds, 1),
            "vehicles": len(envs[0].core.world.get_actors().filter("vehicle.*")),
            "rpc_ports": [e.core.server.ports.rpc for e in envs],
            "killed_engine_pids": killed,
            "client_pids": clients,
            "killed_client_pid": killed_client,
            "envs": [
                {
                    "frames_driven": e.frames,
                    "restarted_at_frame": e.restarted_at,
                    **e.counts,
                    **{k: round(v, 4) if isinstance(v, float) else v for k, v in e.core.health.items()},
                }
                for e in envs
            ],
        }
        failures = []
        if len(set(out["rpc_ports"])) != len(envs):
            failures.append(f"envs of one slot share a server port: {out['rpc_ports']}")
        if killed and not envs[0].restarted_at:
            failures.append(f"engine {killed} killed at frame {args.kill_at} but no restart was seen")
        if killed and envs[0].frames <= args.kill_at:
            failures.append("no frame was driven after the relaunch")
        if os.getpid() in clients:
            failures.append("a CARLA client runs in the smoke's own process")
        after = [k for k in envs[0].restarted_at if k >= args.kill_client_at]
        if killed_client and not after:
            failures.append(
                f"client process {killed_client} killed at frame {args.kill_client_at} but no restart was seen"
            )
        if killed_client and after and envs[0].last_driven <= after[0]:
            failures.append("no frame was driven after the client process was relaunched")
        return out, failures
    finally:
        for env in envs:
            for sensor in env.sensors.values():
                sensor.destroy()
            env.core.close()


def main(argv=None) -> int:
    args = parse_args(argv)
    from carla_env.config import ConfigError

    try:
        out, failures = run(args)
    except (ValueError, ConfigError) as e:
        print(f"carla-smoke: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    if out:
        print(json.dumps(out))
    if failures:
        print(f"carla-smoke FAILED: {'; '.join(failures)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
