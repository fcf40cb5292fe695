#!/bin/bash
# CARLA release and AdditionalMaps (ImportAssets), into /opt/carla. Each tarball is downloaded to a
# file and checked against its recorded SHA-256 before anything is extracted or run as root.
set -euxo pipefail
: "${CARLA_VERSION:?}" "${CARLA_SHA256:?}" "${ADDITIONAL_MAPS_SHA256:?}"
base=${CARLA_BASE_URL:-https://carla-releases.s3.us-east-005.backblazeb2.com/Linux}
dir=${CARLA_DIR:-/opt/carla}
carla="CARLA_${CARLA_VERSION}.tar.gz"
maps="AdditionalMaps_${CARLA_VERSION}.tar.gz"
download=$(mktemp -d)
trap 'rm -rf "$download"' EXIT
curl -fSL --retry 5 -o "$download/$carla" "$base/$carla"
curl -fSL --retry 5 -o "$download/$maps" "$base/$maps"
(cd "$download" && sha256sum -c --strict - <<SUMS
$CARLA_SHA256  $carla
$ADDITIONAL_MAPS_SHA256  $maps
SUMS
)
mkdir -p "$dir" && cd "$dir"
tar xzf "$download/$carla"
mv "$download/$maps" Import/
./ImportAssets.sh
rm -f Import/*.tar.gz
chown -R "${CARLA_OWNER:-ubuntu}:" "$dir"
echo "CARLA_ROOT=$dir" >> "${ENVIRONMENT_FILE:-/etc/environment}"
