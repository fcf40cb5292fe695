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
# The engine: with FAKE_CARLA_ENGINE_EXIT=FILE it takes 0.5 s to shut down on SIGTERM, then writes FILE.
ENGINE = """
import os, signal, sys, time
def on_term(*_):
    time.sleep(0.5)
    if os.environ.get("FAKE_CARLA_ENGINE_EXIT"):
        open(os.environ["FAKE_CARLA_ENGINE_EXIT"], "w").write("clean")
    sys.exit(0)
signal.signal(signal.SIGTERM, on_term)
print("up", flush=True)
time.sleep(3600)
"""
engine = subprocess.Popen([sys.executable, "-c", ENGINE], stdout=subprocess.PIPE)
engine.stdout.readline()  # its SIGTERM handler is in place
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
