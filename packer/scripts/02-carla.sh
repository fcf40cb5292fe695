#!/bin/bash
# CARLA release and AdditionalMaps (ImportAssets), into /opt/carla.
set -euxo pipefail
: "${CARLA_VERSION:?}"
base="https://carla-releases.s3.us-east-005.backblazeb2.com/Linux"
mkdir -p /opt/carla && cd /opt/carla
curl -fSL --retry 5 "$base/CARLA_${CARLA_VERSION}.tar.gz" | tar xz
curl -fSL --retry 5 -o Import/AdditionalMaps_${CARLA_VERSION}.tar.gz "$base/AdditionalMaps_${CARLA_VERSION}.tar.gz"
./ImportAssets.sh
rm -f Import/*.tar.gz
chown -R ubuntu:ubuntu /opt/carla
echo "CARLA_ROOT=/opt/carla" >> /etc/environment
