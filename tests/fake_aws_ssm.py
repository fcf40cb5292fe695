"""A stand-in for `aws ssm start-session` port forwarding, for tests with no AWS account: it serves
localPortNumber on 127.0.0.1 and connects each client where the SSM document says the agent on the
instance connects (amazon-ssm-agent's port plugin): AWS-StartPortForwardingSession to localhost,
AWS-StartPortForwardingSessionToRemoteHost to `host`. Here the "instance" is this machine.

    python tests/fake_aws_ssm.py ssm start-session --region R --target i-... --document-name D --parameters JSON
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import threading

TARGET_HOST = {
    "AWS-StartPortForwardingSession": lambda params: "localhost",
    "AWS-StartPortForwardingSessionToRemoteHost": lambda params: params["host"][0],
}


def forward(listen_port: int, host: str, port: int) -> socket.socket:
    """Serve 127.0.0.1:listen_port in a daemon thread, piping each connection to host:port."""
    server = socket.create_server(("127.0.0.1", listen_port))

    def pipe(src, dst):
        try:
            while data := src.recv(65536):
                dst.sendall(data)
            dst.shutdown(socket.SHUT_WR)  # pass the end of one direction on, keep the other open
        except OSError:
            for s in (src, dst):
                s.close()

    def serve():
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection((host, port), timeout=5)
                upstream.settimeout(None)  # idle keep-alive connections stay open, as over SSM
            except OSError:  # nothing listens there on the "instance": the client sees a reset
                client.close()
                continue
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=pipe, args=(a, b), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    return server


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("service", choices=["ssm"])
    p.add_argument("command", choices=["start-session"])
    p.add_argument("--region", required=True)
    p.add_argument("--target", required=True)
    p.add_argument("--document-name", required=True, choices=sorted(TARGET_HOST))
    p.add_argument("--parameters", required=True)
    args = p.parse_args(argv)
    params = json.loads(args.parameters)
    host = TARGET_HOST[args.document_name](params)
    forward(int(params["localPortNumber"][0]), host, int(params["portNumber"][0]))
    threading.Event().wait()  # like the real session: until the caller ends it
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
