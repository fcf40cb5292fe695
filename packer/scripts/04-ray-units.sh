#!/bin/bash
# Ray's systemd units: started by user_data once /etc/ray/env exists (not enabled in the image).
set -euxo pipefail
install -m 0755 /tmp/carla-rl-files/ray-node.sh /tmp/carla-rl-files/spot-drain.sh /tmp/carla-rl-files/ray-node-id.py /opt/carla-rl/
install -m 0644 /tmp/carla-rl-files/ray-node.service /tmp/carla-rl-files/spot-drain.service /etc/systemd/system/
systemctl daemon-reload
