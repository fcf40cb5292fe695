#!/bin/bash
# This node's Ray, head or worker, from the env file user_data wrote; blocks (ray-node.service).
set -euo pipefail
set -a
. "${RAY_ENV_FILE:-/etc/ray/env}"
set +a
RAY=${RAY_BIN:-/opt/carla-rl/.venv/bin/ray}
# Jobs run `python ...`: the project's venv first on PATH, as for Ray itself.
export PATH="$(dirname "$RAY"):$PATH"
if [ "$RAY_ROLE" = head ]; then
  # Dashboard and Jobs API on the private address only (reached by SSM port forward).
  exec "$RAY" start --head --block --node-ip-address="$RAY_NODE_IP" --port="$RAY_PORT" \
    --dashboard-host="$RAY_NODE_IP" --dashboard-port="$RAY_DASHBOARD_PORT" \
    --resources='{"head": 1}' ${RAY_EXTRA_ARGS:-}
else
  exec "$RAY" start --block --address="$RAY_HEAD_ADDRESS" --node-ip-address="$RAY_NODE_IP" \
    --resources='{"worker": 1}' ${RAY_EXTRA_ARGS:-}
fi
