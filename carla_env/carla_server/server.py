"""One CARLA server process: launched headless in its own process group with its own log, probed
until ready inside a deadline, stopped by group (TERM, then KILL). Never kills anything by name.

A reaper process (reaper.py) kills the group if the launching process dies without closing it, and
atexit / SIGTERM handlers stop every live server on a normal exit.
"""

from __future__ import annotations

import atexit
import os
import signal
import subprocess
import sys
import time
import weakref
from collections.abc import Callable
from pathlib import Path

from carla_env.carla_server.ports import PortLease, Ports, is_free
from carla_env.carla_server.reaper import group_alive

LAUNCHER = "CarlaUE4.sh"
_LIVE: weakref.WeakSet[CarlaServer] = weakref.WeakSet()


class ServerError(RuntimeError):
    """A server that would not start or answer; str(e) says which port, why, and where its log is."""


class VersionMismatch(ServerError):
    pass


def carla_probe(host: str, port: int, timeout: float) -> None:
    """Ready when the server answers; a client/server version mismatch fails at once."""
    import carla

    client = carla.Client(host, port)
    client.set_timeout(timeout)
    check_versions(client, port)


def check_versions(client, port: int) -> None:
    """The server's version (an RPC: raises while it is not up) against the client's."""
    server, ours = client.get_server_version(), client.get_client_version()
    if server.split("-")[0] != ours.split("-")[0]:
        raise VersionMismatch(
            f"CARLA server on port {port} is {server} but the carla client is {ours}; "
            f"pip install carla=={server.split('-')[0]} or use the matching server"
        )


def server_command(
    carla_root: str, ports: Ports, quality: str, gpu: int | None, rendering: bool, extra: list[str]
) -> list[str]:
    launcher = Path(carla_root) / LAUNCHER
    if not launcher.is_file():
        raise ServerError(f"no {LAUNCHER} in {carla_root}; set CARLA_ROOT to the CARLA release folder")
    cmd = [
        str(launcher),
        "-RenderOffScreen" if rendering else "-nullrhi",  # -opengl was removed in 0.9.12
        f"-carla-rpc-port={ports.rpc}",
        f"-carla-streaming-port={ports.streaming}",
        f"-carla-secondary-port={ports.secondary}",
        f"-quality-level={quality}",
        "-nosound",
        # The shipping binary logs to CarlaUE4/Saved/Logs, shared by every server: to stdout instead,
        # which start() sends to this server's own log file.
        "-stdout",
        "-FullStdOutLogOutput",
    ]
    if gpu is not None:
        cmd.append(f"-graphicsadapter={gpu}")
    return cmd + list(extra)


class CarlaServer:
    def __init__(
        self,
        command: list[str],
        ports: Ports,
        log_path: Path,
        host: str = "localhost",
        lease: PortLease | None = None,
    ) -> None:
        self.command, self.ports, self.log_path, self.host = command, ports, Path(log_path), host
        self.lease = lease  # the ports' lock files, released once the group is gone
        self.process: subprocess.Popen | None = None
        self._reaper: subprocess.Popen | None = None

    # -------------------------------------------------------------------------------------------- life
    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self.command,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self._reaper = subprocess.Popen(
            [sys.executable, "-m", "carla_env.carla_server.reaper", str(os.getpid()), str(self.process.pid)],
            start_new_session=True,
            stdin=subprocess.DEVNULL,
            env={
                **os.environ,
                "PYTHONPATH": os.pathsep.join(filter(None, [_package_root(), os.environ.get("PYTHONPATH")])),
            },
        )
        _LIVE.add(self)
        _install_exit_handlers()

    def wait_ready(
        self,
        timeout: float,
        probe: Callable[[str, int, float], None] = carla_probe,
        probe_timeout: float = 2.0,
    ) -> float:
        """Seconds until the server answered; on death or deadline the server is stopped and ServerError raised."""
        t0 = time.monotonic()
        last = None
        while time.monotonic() - t0 < timeout:
            code = self.process.poll()
            if code is not None:
                self.stop()
                raise ServerError(
                    f"CARLA server on port {self.ports.rpc} exited with code {code} while starting; log: {self.log_path}"
                )
            try:
                probe(
                    self.host, self.ports.rpc, min(probe_timeout, max(timeout - (time.monotonic() - t0), 0.1))
                )
                self._check_listener_is_ours()
                return time.monotonic() - t0
            except ServerError:  # a version mismatch, another program's listener: final
                self.stop()
                raise
            except Exception as e:  # not up yet: connection refused, client time-out
                last = e
                time.sleep(0.2)
        self.stop()
        raise ServerError(
            f"CARLA server on port {self.ports.rpc} did not answer within {timeout:.0f} s "
            f"(last: {type(last).__name__ if last else 'none'}); raise simulator.carla.ready_timeout or see {self.log_path}"
        )

    def _check_listener_is_ours(self) -> None:
        """The RPC port answered; it must be our group's socket, not another program's that took the
        port before our server bound it (our server would then be unreachable and the env drive theirs)."""
        inodes = listening_inodes(self.ports.rpc)
        if inodes and self.host in ("localhost", "127.0.0.1") and not group_holds(self.process.pid, inodes):
            raise ServerError(
                f"port {self.ports.rpc} answers, but not from the CARLA server we launched (pid {self.pid}): "
                f"another program took it; see {self.log_path} or set simulator.carla.port to a free range"
            )

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def rss_bytes(self) -> int:
        """Resident memory of the whole process group (the launcher script and the engine)."""
        if not self.alive():
            return 0
        total = 0
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                if os.getpgid(int(entry.name)) != self.process.pid:
                    continue
                total += int((entry / "statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
            except (OSError, ValueError, IndexError):
                continue
        return total

    def stop(self, grace: float = 10.0, port_wait: float = 10.0) -> None:
        """TERM the group, KILL it after `grace`, then wait (bounded) for its ports to free.
        The grace is the whole group's: the launcher script exits at once, the engine behind it not."""
        _LIVE.discard(self)
        if self.process is not None:
            pgid = self.process.pid
            _signal_group(pgid, signal.SIGTERM)
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline:
                self.process.poll()  # reap the launcher, else the group never looks empty
                if not group_alive(pgid):
                    break
                time.sleep(0.05)
            _signal_group(pgid, signal.SIGKILL)  # stragglers of the group too (the engine behind the script)
            self.process.wait()
            deadline = time.monotonic() + port_wait
            while time.monotonic() < deadline and not all(is_free(p) for p in self.ports.all()[:3]):
                time.sleep(0.1)
        if self._reaper is not None and self._reaper.poll() is None:
            self._reaper.kill()
            self._reaper.wait()
        self._reaper = None
        if self.lease is not None:
            self.lease.release()


def listening_inodes(port: int) -> set[int]:
    """Socket inodes listening on a TCP port, from /proc/net/tcp{,6} (empty where there is no /proc)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                inodes.add(int(fields[9]))
    return inodes


def group_holds(pgid: int, inodes: set[int]) -> bool:
    """Whether a process of the group has one of these sockets open."""
    wanted = {f"socket:[{i}]" for i in inodes}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.getpgid(int(entry.name)) != pgid:
                continue
            if any(os.readlink(fd) in wanted for fd in (entry / "fd").iterdir()):
                return True
        except OSError:
            continue
    return False


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def _package_root() -> str:
    return str(Path(__file__).resolve().parents[2])


def stop_all() -> None:
    for server in list(_LIVE):
        server.stop(grace=5.0, port_wait=0.0)


_handlers_installed = False


def _install_exit_handlers() -> None:
    """atexit always; SIGTERM only where nobody else handles it (Ray workers keep theirs)."""
    global _handlers_installed
    if _handlers_installed:
        return
    _handlers_installed = True
    atexit.register(stop_all)
    try:
        if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:

            def on_term(signum, frame):
                stop_all()
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                os.kill(os.getpid(), signal.SIGTERM)

            signal.signal(signal.SIGTERM, on_term)
    except ValueError:  # not the main thread
        pass
