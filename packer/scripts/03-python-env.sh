#!/bin/bash
# The project's environment: the source tarball `make ami` packed, and every package of
# packer/requirements.lock checked against its hashes (no unpinned or unhashed download).
set -euxo pipefail
apt-get install -y -q python3.11 python3.11-venv python3.11-dev
mkdir -p /opt/carla-rl && tar xzf /tmp/carla_rl_src.tar.gz -C /opt/carla-rl
python3.11 -m venv /opt/carla-rl/.venv
/opt/carla-rl/.venv/bin/pip install -q --require-hashes --only-binary :all: -r /opt/carla-rl/packer/requirements.lock
# The project itself from its source folder (no build step, so nothing unhashed is fetched to build it).
echo /opt/carla-rl > "$(/opt/carla-rl/.venv/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')/carla-rl.pth"
chown -R ubuntu:ubuntu /opt/carla-rl
