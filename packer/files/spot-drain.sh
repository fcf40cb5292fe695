#!/bin/bash
# Drains this spot worker when AWS announces its interruption (2 minutes' notice): polls IMDSv2's
# spot/instance-action and runs `ray stop`, so Ray moves work off the node before it goes.
set -uo pipefail
IMDS=${IMDS_URL:-http://169.254.169.254}
RAY=${RAY_BIN:-/opt/carla-rl/.venv/bin/ray}
while true; do
  token=$(curl -sf -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 300' "$IMDS/latest/api/token")
  if [ -n "$token" ] && curl -sf -o /dev/null -H "X-aws-ec2-metadata-token: $token" \
      "$IMDS/latest/meta-data/spot/instance-action"; then
    echo "spot interruption notice: draining" >&2
    exec "$RAY" stop
  fi
  sleep "${DRAIN_POLL_S:-5}"
done
