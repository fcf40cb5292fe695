#!/usr/bin/env python3
"""A stand-in for CarlaUE4.sh: takes its flags, binds the RPC port like the server, and misbehaves on
request (FAKE_CARLA_MODE): ok (serve), exit (exit 3 at start), hang (never answer), die:N (serve N s,
then crash), slow:N (a cold start: bind only after N s). Like the real launcher it runs a child (the "engine"), so a kill must take the group."""

import os
import socket
import subprocess
import sys
import time

args = dict(a.lstrip("-").split("=", 1) for a in sys.argv[1:] if "=" in a)
mode = os.environ.get("FAKE_CARLA_MODE", "ok")
record = os.environ.get("FAKE_CARLA_RECORD")
if record:
    with open(record, "a") as f:
        f.write(" ".join(sys.argv[1:]) + "\n")
if mode == "exit":
    sys.exit(3)
engine = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
with open(os.environ.get("FAKE_CARLA_PIDS", os.devnull), "a") as f:
    f.write(f"{os.getpid()} {engine.pid}\n")
if mode == "hang":
    time.sleep(3600)
if mode.startswith("slow:"):
    time.sleep(float(mode.split(":")[1]))
srv = socket.socket()
srv.setsockopt(
    socket.SOL_SOCKET, socket.SO_REUSEADDR, 1
)  # as CARLA's asio acceptor: TIME_WAIT won't block a relaunch
srv.bind(("127.0.0.1", int(args["carla-rpc-port"])))
srv.listen(16)
srv.settimeout(0.1)
deadline = time.monotonic() + float(mode.split(":")[1]) if mode.startswith("die:") else float("inf")
while time.monotonic() < deadline:
    try:
        conn, _ = srv.accept()
        conn.close()
    except TimeoutError:
        pass
sys.exit(1)
