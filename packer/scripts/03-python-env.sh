#!/bin/bash
# The project's environment: the source tarball `make ami` packed, installed with its own pins.
set -euxo pipefail
apt-get install -y -q python3.11 python3.11-venv python3.11-dev
mkdir -p /opt/carla-rl && tar xzf /tmp/carla_rl_src.tar.gz -C /opt/carla-rl
python3.11 -m venv /opt/carla-rl/.venv
/opt/carla-rl/.venv/bin/pip install -q --upgrade pip
/opt/carla-rl/.venv/bin/pip install -q -e /opt/carla-rl
chown -R ubuntu:ubuntu /opt/carla-rl
