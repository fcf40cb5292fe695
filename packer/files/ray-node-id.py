"""Print the Ray node id of this machine's node (spot-drain.sh names it to `ray drain-node`, whose
default would start a new local Ray instead of asking the cluster). Reads the node's /etc/ray/env
settings from the environment: RAY_HEAD_ADDRESS (or RAY_PORT on the head), RAY_NODE_IP, token auth."""

import os

import ray

address = os.environ.get("RAY_HEAD_ADDRESS") or f"{os.environ['RAY_NODE_IP']}:{os.environ['RAY_PORT']}"
ray.init(
    address=address, _node_ip_address=os.environ["RAY_NODE_IP"], logging_level="ERROR", log_to_driver=False
)
print(ray.get_runtime_context().get_node_id())
