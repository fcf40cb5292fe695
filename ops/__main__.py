"""python -m ops {ami, up, down, status, forward, submit, logs, pull}: what the make targets run.

Exit code 2 with one line on a user error (missing CLI, credentials, AMI, quota, cluster state,
experiment, run).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys

from ops.tools import OpsError


def parse(argv):
    p = argparse.ArgumentParser(prog="python -m ops", description=__doc__)
    p.add_argument("--region", default=os.environ.get("AWS_REGION", "us-west-2"))
    p.add_argument("--project", default="carla-rl")
    sub = p.add_subparsers(dest="command", required=True)
    ami = sub.add_parser("ami", help="build the CARLA AMI and record its id for terraform")
    ami.add_argument("--carla-version", default="0.9.16")
    up = sub.add_parser("up", help="checks, cost estimate and plan summary; then results bucket + cluster")
    up.add_argument("--workers", type=int, default=2)
    up.add_argument("--max-workers", type=int, default=8)
    up.add_argument("--yes", action="store_true", help="apply without asking")
    sub.add_parser("down", help="destroy the cluster (the results bucket and flow logs stay)")
    sub.add_parser("status", help="head, workers and `ray status`")
    sub.add_parser("forward", help="SSM port forward of the Ray dashboard to localhost:8265 (Ctrl-C ends it)")
    submit = sub.add_parser(
        "submit", help="train EXP on the cluster through the Ray Jobs API and stream logs"
    )
    submit.add_argument("exp")
    submit.add_argument("--args", default="", help="extra train.py flags")
    logs = sub.add_parser("logs", help="stream a job's logs")
    logs.add_argument("job_id")
    pull = sub.add_parser("pull", help="download s3://<bucket>/runs/RUN into runs/RUN")
    pull.add_argument("run")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse(argv)
    try:
        return _dispatch(args)
    except OpsError as e:
        print(f"ops: {e}", file=sys.stderr)
        return 2


def _dispatch(args) -> int:
    from ops import ami, cluster, jobs
    from ops.tools import terraform_outputs

    if args.command == "ami":
        print(ami.build(args.region, args.carla_version))
        return 0
    if args.command == "up":
        session = _session(args.region)
        outputs = cluster.up(
            session,
            args.region,
            args.project,
            {"worker_desired": args.workers, "worker_max": args.max_workers},
            args.yes,
        )
        print(cluster.wait_for_head(session.client("ssm"), outputs["head_instance_id"]))
        print(json.dumps(outputs, indent=2))
        return 0
    if args.command == "down":
        cluster.down(args.region, args.project)
        return 0
    if args.command == "submit":
        jobs.check_experiment(args.exp)
    # No cluster state is the first thing to say, before credentials or the network.
    outputs = terraform_outputs(cluster.CLUSTER, cluster.CLUSTER_OUTPUTS)
    if args.command == "forward":
        forward = jobs.port_forward(outputs["head_instance_id"], args.region, outputs["head_private_ip"],
                                    outputs["dashboard_port"], outputs["dashboard_port"])  # fmt: skip
        print(f"Ray dashboard: http://127.0.0.1:{outputs['dashboard_port']} (Ctrl-C to stop)", flush=True)
        try:
            forward.wait()
        finally:
            forward.terminate()
        return 0
    session = _session(args.region)
    if args.command == "status":
        print(json.dumps(cluster.status(session, outputs), indent=2))
    elif args.command == "pull":
        for path in jobs.pull_results(session.client("s3"), outputs["bucket_name"], args.run):
            print(path)
    else:
        forward = jobs.port_forward(outputs["head_instance_id"], args.region, outputs["head_private_ip"],
                                    outputs["dashboard_port"], outputs["dashboard_port"])  # fmt: skip
        try:
            token = jobs.ray_token(session.client("ssm"), outputs["ray_token_parameter"])
            client = jobs.job_client(outputs["dashboard_port"], token)
            job_id = (
                args.job_id
                if args.command == "logs"
                else jobs.submit(client, args.exp, outputs["bucket_name"], args.args)
            )
            print(f"job {job_id}", flush=True)
            asyncio.run(jobs.stream_logs(client, job_id))
        finally:
            forward.terminate()
    return 0


def _session(region: str):
    """A boto3 session whose credentials work (else a one-line OpsError)."""
    import boto3

    from ops.tools import aws_account

    session = boto3.Session(region_name=region)
    aws_account(session)
    return session


if __name__ == "__main__":
    sys.exit(main())
