#!/bin/bash
# CARLA must start headless and tick from the Python client, or no image is saved.
set -euxo pipefail
cd /opt/carla-rl
CARLA_ROOT=/opt/carla timeout 900 .venv/bin/python -m carla_env.carla_server.smoke --town Town01 --frames 100
