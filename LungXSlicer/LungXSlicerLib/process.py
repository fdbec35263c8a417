"""The lungx_core worker as a child process: start it, read its JSON progress lines without blocking, cancel it.

Pure Python (no Slicer): the module polls :meth:`WorkerProcess.poll` from a QTimer, a console script or a test
can call :meth:`WorkerProcess.wait`. A reader thread drains the child's stdout and stderr so the child never
blocks on a full pipe; lines are decoded with ``errors="replace"`` because a library may print anything.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

# lungx_core.worker's exit codes
EXIT_OK, EXIT_INPUT, EXIT_INTERNAL, EXIT_INTERRUPTED = 0, 2, 3, 130
EXIT_CANCELLED = -1  # our own: the user cancelled and the tree was killed


@dataclass
class WorkerEvent:
    event: str  # progress | done | error | log (a line that is not one of the worker's JSON events)
    fraction: float | None = None
    message: str = ""
    manifest: str = ""


def parse_line(line: str) -> WorkerEvent:
    """One stdout line of the worker; anything that is not a JSON event becomes a ``log`` event."""
    text = line.rstrip("\r\n")
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return WorkerEvent("log", message=text)
    if not isinstance(data, dict) or data.get("event") not in ("progress", "done", "error"):
        return WorkerEvent("log", message=text)
    fraction = data.get("fraction")
    return WorkerEvent(
        data["event"],
        fraction=float(fraction) if isinstance(fraction, (int, float)) else None,
        message=str(data.get("message", "")),
        manifest=str(data.get("manifest", "")),
    )


def python_for_worker() -> str:
    """The interpreter that runs the worker: ``PythonSlicer`` inside Slicer (same packages as Slicer's Python,
    without Slicer's GUI), else this interpreter."""
    found = shutil.which("PythonSlicer")
    return found or sys.executable


def worker_command(
    task: str,
    input_path: Path,
    output_dir: Path,
    device: str = "auto",
    fast: bool = False,
    options: dict | None = None,
    python: str | None = None,
) -> list[str]:
    cmd = [python or python_for_worker(), "-m", "lungx_core.worker", "--task", task]
    cmd += ["--input", str(input_path), "--output-dir", str(output_dir), "--device", device]
    if fast:
        cmd.append("--fast")
    for key, value in (options or {}).items():
        cmd += ["--option", f"{key}={json.dumps(value) if not isinstance(value, str) else value}"]
    return cmd


def kill_tree(pid: int, timeout: float = 5.0) -> None:
    """Kill a process and every descendant (a worker may start its own helpers, e.g. data loaders)."""
    try:
        import psutil
    except ImportError:  # psutil ships with Slicer; plain-Python fallback kills the process group
        try:
            if os.name == "posix":
                os.killpg(os.getpgid(pid), signal.SIGKILL)
            else:
                os.kill(pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            pass
        return
    try:
        parent = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return
    procs = parent.children(recursive=True) + [parent]
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    psutil.wait_procs(procs, timeout=timeout)


@dataclass
class WorkerProcess:
    """A running worker. ``poll()`` returns the events that arrived since the last call."""

    command: list[str]
    env: dict[str, str] | None = None
    started: float = field(default_factory=time.monotonic)
    stderr_lines: list[str] = field(default_factory=list)
    cancelled: bool = False

    def __post_init__(self) -> None:
        self._events: queue.Queue[WorkerEvent] = queue.Queue()
        env = dict(os.environ if self.env is None else self.env)
        env["PYTHONUNBUFFERED"] = "1"
        self._proc = subprocess.Popen(
            self.command,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=(os.name == "posix"),  # own process group: the fallback kill reaches helpers
        )
        self._readers = [
            threading.Thread(target=self._read_stdout, daemon=True),
            threading.Thread(target=self._read_stderr, daemon=True),
        ]
        for t in self._readers:
            t.start()

    @property
    def pid(self) -> int:
        return self._proc.pid

    def _read_stdout(self) -> None:
        for raw in iter(self._proc.stdout.readline, b""):
            self._events.put(parse_line(raw.decode("utf-8", errors="replace")))
        self._proc.stdout.close()

    def _read_stderr(self) -> None:
        for raw in iter(self._proc.stderr.readline, b""):
            self.stderr_lines.append(raw.decode("utf-8", errors="replace").rstrip("\r\n"))
        self._proc.stderr.close()

    def poll(self) -> list[WorkerEvent]:
        events = []
        while True:
            try:
                events.append(self._events.get_nowait())
            except queue.Empty:
                return events

    @property
    def running(self) -> bool:
        return self._proc.poll() is None

    @property
    def finished(self) -> bool:
        """Exited and every line of its output has been read."""
        return not self.running and not any(t.is_alive() for t in self._readers)

    @property
    def returncode(self) -> int | None:
        if self.cancelled:
            return EXIT_CANCELLED
        return self._proc.poll()

    def cancel(self) -> None:
        self.cancelled = True
        if self.running:
            kill_tree(self._proc.pid)
        self._proc.wait()

    def wait(self, timeout: float | None = None) -> int:
        self._proc.wait(timeout)
        for t in self._readers:
            t.join(timeout=5)
        return self.returncode

    def elapsed(self) -> float:
        return time.monotonic() - self.started


def remaining_seconds(elapsed: float, fraction: float | None) -> float | None:
    """A plain linear estimate of the time left, once there is enough progress to base it on."""
    if fraction is None or fraction < 0.05 or fraction >= 1.0:
        return None
    return elapsed * (1.0 - fraction) / fraction


def format_status(message: str, elapsed: float, fraction: float | None) -> str:
    left = remaining_seconds(elapsed, fraction)
    tail = f" - about {left:.0f} s left" if left is not None else ""
    return f"{message} ({elapsed:.0f} s){tail}"
