"""An ``infer-serve`` the soak starts itself, in a subprocess on 127.0.0.1 with a free port and
``server.debug_endpoints`` on: start (wait for ``/ready``), its resident memory, its
``/debug/engine`` picture and its Prometheus counters, and a SIGTERM stop that reports the exit
status."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from infer_core.errors import InferError

START_TIMEOUT_S = 300.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ManagedServer:
    def __init__(self, model: str, overrides: Sequence[str], log_path: Path,
                 config: str | None = None, api_key: str | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.api_key = api_key
        self.log_path = log_path
        self.command = [sys.executable, "-m", "infer_core.server.cli",
                        *(["--config", config] if config else []),
                        "--model.path", model, "--server.port", str(self.port),
                        "--server.debug_endpoints", "true", "--server.log_level", "warning",
                        *(["--server.api_key", api_key] if api_key else []), *overrides]
        self.process: subprocess.Popen | None = None

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def start(self, timeout: float = START_TIMEOUT_S) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("wb")
        self.process = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise InferError(f"infer-serve exited with status {self.process.returncode} "
                                 f"before it was ready; its log ({self.log_path}) ends:\n"
                                 f"{self.log_tail()}")
            try:
                if httpx.get(f"{self.url}/ready", headers=self.headers, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise InferError(f"infer-serve was not ready within {timeout:.0f} s; see {self.log_path}.")

    def log_tail(self, lines: int = 20) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def rss_bytes(self) -> int | None:
        """Resident memory of the server process (Linux /proc), None elsewhere."""
        if self.process is None:
            return None
        try:
            for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            return None
        return None

    async def debug_state(self, client: httpx.AsyncClient) -> dict[str, Any]:
        response = await client.get("/debug/engine")
        response.raise_for_status()
        return response.json()

    async def counters(self, client: httpx.AsyncClient) -> dict[str, float]:
        """The Prometheus counters and gauges, summed over labels (name -> value)."""
        response = await client.get("/metrics")
        response.raise_for_status()
        values: dict[str, float] = {}
        for line in response.text.splitlines():
            if line.startswith("#") or not line.strip():
                continue
            name_labels, _, value = line.rpartition(" ")
            name = name_labels.split("{", 1)[0]
            values[name] = values.get(name, 0.0) + float(value)
        return values

    def stop(self, timeout: float = 60.0) -> int | None:
        """SIGTERM (a drain), then the exit status; killed if it does not exit in time."""
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(self.process.pid, signal.SIGKILL)
            return self.process.wait()
