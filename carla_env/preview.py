"""Look at a town through the bird's-eye view: a whole-map image and a hero-centred frame.

python -m carla_env.preview --town GridTown01   # writes runs/preview/bev.png and bev_map.png
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np
from pydantic import ValidationError

from carla_env.config import CarlaServerConfig, TrafficConfig
from carla_env.embedded import EmbeddedWorld
from carla_env.maps import TownError, load_town
from carla_env.maps.route import plan_route
from carla_env.sensors import BirdviewRenderer

DEFAULT_OUT = Path("runs/preview/bev.png")  # under runs/, which git ignores


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--town", default="GridTown01", help="generated town, grid:..., .xodr path or CARLA town"
    )
    parser.add_argument(
        "--out",
        default=str(DEFAULT_OUT),
        help="hero frame PNG; the map goes beside it as *_map.png (default: %(default)s, git-ignored)",
    )
    parser.add_argument("--vehicles", type=int, default=40)
    parser.add_argument("--walkers", type=int, default=60, help="pedestrians on the town's sidewalks")
    parser.add_argument("--seconds", type=float, default=5.0, help="simulated before the snapshot")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:  # the config's own limits: the preview takes what `traffic.vehicles` / `carla.walkers` take
        TrafficConfig(vehicles=args.vehicles)
        CarlaServerConfig(walkers=args.walkers)
    except ValidationError as e:
        error = e.errors()[0]
        print(f"--{error['loc'][0]} {error['input']}: {error['msg']}", file=sys.stderr)
        return 2
    if args.seconds < 0:
        print(f"--seconds {args.seconds}: give 0 or more simulated seconds", file=sys.stderr)
        return 2
    out = Path(args.out)
    if out.suffix.lower() != ".png":
        print(f"--out {out}: give a .png path", file=sys.stderr)
        return 2
    try:
        town = load_town(args.town)
    except TownError as e:
        print(e, file=sys.stderr)
        return 2
    world = EmbeddedWorld(town, seed=args.seed)
    g = town.lanes
    hero = world.spawn_actor(
        world.get_blueprint_library().find("vehicle.tesla.model3"), town.spawn_points(seed=args.seed)[0]
    )
    world.spawn_traffic(args.vehicles)
    world.spawn_walkers(args.walkers, seed=args.seed)
    renderer = BirdviewRenderer(g, delta_seconds=world.delta_seconds)
    loc = hero.get_location()
    lane, s, _ = g.locate((loc.x, loc.y, loc.z), np.radians(hero.get_transform().rotation.yaw))
    goal = int(np.random.default_rng(args.seed).choice(np.flatnonzero(~g.is_junction & g.lane_main)))
    renderer.set_route(plan_route(g, (lane, s), (goal, g.lane_length[goal] / 2)).points)
    for _ in range(max(1, int(args.seconds / world.delta_seconds))):  # one tick at least: a frame
        world.tick()
        obs = renderer(world.birdview_scene(hero))
    out.parent.mkdir(parents=True, exist_ok=True)
    frame = cv2.resize(renderer.colorize(obs), None, fx=2, fy=2, interpolation=cv2.INTER_NEAREST)
    cv2.imwrite(str(out), frame[:, :, ::-1])
    map_path = out.with_name(out.stem + "_map.png")
    cv2.imwrite(str(map_path), town_image(renderer, world.birdview_scene(hero))[:, :, ::-1])
    print(f"wrote {out.resolve()} ({frame.shape[1]}x{frame.shape[0]}) and {map_path.resolve()}")
    return 0


def town_image(renderer: BirdviewRenderer, scene) -> np.ndarray:
    """The whole town at the renderer's resolution: road, markings, lights, vehicles, walkers, route."""
    raster = renderer.raster
    img = np.zeros((*raster.image.shape, 3), np.uint8)
    for bit, color in ((0, (70, 70, 70)), (2, (200, 200, 200)), (1, (255, 255, 255))):
        img[(raster.image >> bit) & 1 > 0] = color
    if renderer.route is not None:
        cv2.polylines(img, [raster.px(renderer.route)], False, (40, 90, 160), 3)
    colours = {0: (230, 0, 0), 1: (240, 220, 0), 2: (0, 220, 0)}
    seg_light, segs = renderer._stop_lines
    for k, seg in zip(seg_light, segs, strict=True):
        cv2.line(img, *map(tuple, raster.px(seg)), colours.get(int(scene.light_states[k]), (90, 90, 90)), 2)
    for boxes, color in (
        (scene.vehicles, (0, 160, 255)),
        (scene.walkers, (255, 0, 255)),
        (scene.ego[None], (230, 230, 60)),
    ):
        for x, y, yaw, hl, hw in boxes:
            c, s = np.cos(yaw), np.sin(yaw)
            corners = [
                (x + f * hl * c - r * hw * s, y + f * hl * s + r * hw * c)
                for f, r in ((1, 1), (1, -1), (-1, -1), (-1, 1))
            ]
            cv2.fillPoly(img, [raster.px(np.array(corners))], color)
            if boxes is scene.walkers:  # a walker is a pixel or two: mark it
                cv2.circle(img, tuple(raster.px(np.array([[x, y]]))[0]), 3, color, -1)
    return img


if __name__ == "__main__":
    sys.exit(main())
