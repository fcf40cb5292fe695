#!/bin/bash
# Drains this spot worker before it goes, on either warning IMDSv2 gives: a spot interruption
# notice (2 minutes), or the auto scaling group moving it to Terminated (capacity rebalance and
# scale-in give no notice; the group's lifecycle hook holds the instance meanwhile).
# `ray drain-node` tells the GCS the node is being preempted and when: Ray stops scheduling there
# and moves work off it, where `ray stop` would just drop the node and its tasks.
set -uo pipefail
set -a
. "${RAY_ENV_FILE:-/etc/ray/env}"
set +a
IMDS=${IMDS_URL:-http://169.254.169.254}
RAY=${RAY_BIN:-/opt/carla-rl/.venv/bin/ray}
PYTHON=${RAY_PYTHON:-$(dirname "$RAY")/python}
metadata() { curl -sf -H "X-aws-ec2-metadata-token: $token" "$IMDS/latest/meta-data/$1"; }
while true; do
  reason=
  token=$(curl -sf -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 300' "$IMDS/latest/api/token")
  if [ -n "$token" ]; then
    if metadata spot/instance-action >/dev/null; then
      reason="spot interruption notice"
    elif [ "$(metadata autoscaling/target-lifecycle-state)" = Terminated ]; then
      reason="auto scaling termination"
    fi
  fi
  if [ -n "$reason" ]; then
    echo "$reason: draining this Ray node" >&2
    # Named explicitly: drain-node's default node would be a new local Ray, not this cluster's node.
    node_id=$("$PYTHON" "${NODE_ID_SCRIPT:-/opt/carla-rl/ray-node-id.py}") || exit 1
    exec "$RAY" drain-node --address "$RAY_HEAD_ADDRESS" --node-id "$node_id" \
      --reason DRAIN_NODE_REASON_PREEMPTION --reason-message "$reason" --deadline-remaining-seconds 120
  fi
  sleep "${DRAIN_POLL_S:-5}"
done
