"""``otpd serve --processes N``: a small synchronous parent that runs N ``otpd serve``
children, each its own event loop on the same port (``SO_REUSEPORT``).

No event loop and no thread here: ``subprocess.Popen``, ``select`` and signal handlers.
Each child gets one end of a socket pair (:class:`ChildLink`): it says ``ready`` once it
listens, or ``failed <line>`` when it cannot start, and it stops by itself when the other
end closes, so children never outlive a supervisor that was killed.

The supervisor forwards SIGTERM and SIGINT to the children and waits for them to drain.
A child that dies on its own is started again after a backoff that grows while restarts
keep failing. A child that cannot start the first time ends the supervisor with that
child's one-line failure.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import FrameType

import structlog

__all__ = ["LINK_FLAG", "ChildLink", "Supervisor", "child_command"]

log = structlog.get_logger("otpd.supervisor")

LINK_FLAG = "--supervised-fd"
_READY = b"ready"
_FAILED = b"failed "
_BACKOFF_FIRST = 0.5
_BACKOFF_MAX = 30.0
_HEALTHY_AFTER = 10.0  # a child that ran this long before dying restarts without delay
_KILL_GRACE = 15.0  # beyond the drain deadline, before a child still running is killed
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class ChildLink:
    """The child's end of its socket pair with the supervisor."""

    def __init__(self, fd: int) -> None:
        self.sock = socket.socket(fileno=fd)

    def ready(self) -> None:
        self._say(_READY)

    def failed(self, line: str) -> None:
        self._say(_FAILED + line.replace("\n", " ").encode(errors="replace"))

    def _say(self, what: bytes) -> None:
        # a supervisor that is gone cannot be told: the child notices the closed end anyway
        with contextlib.suppress(OSError):
            self.sock.sendall(what + b"\n")

    def gone(self) -> bool:
        """Whether the supervisor's end is closed (call when the socket is readable)."""
        try:
            return self.sock.recv(64) == b""
        except BlockingIOError:
            return False
        except OSError:
            return True

    def close(self) -> None:
        self.sock.close()


@dataclass
class _Child:
    index: int
    instance_id: str
    proc: subprocess.Popen[bytes] | None = None
    link: socket.socket | None = None
    buffer: bytes = b""
    ready: bool = False
    failure: str = ""
    started_at: float = 0.0
    restart_at: float | None = None
    failures: int = 0  # consecutive deaths soon after a start
    starts: int = 0

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None


class Supervisor:
    """Runs ``count`` children of ``command`` (an ``otpd serve`` argv without the link
    flag), child ``i`` with ``OTPD_SERVER__INSTANCE_ID=<instance_base>-<i>`` (and, given a
    ``metrics_port``, ``OTPD_METRICS__PORT=<metrics_port + i - 1>``: each process's
    metrics are its own), until a stop signal; :meth:`run` returns the exit status (and
    :attr:`failure` says why, when nonzero)."""

    def __init__(
        self,
        command: Sequence[str],
        count: int,
        instance_base: str,
        *,
        drain_timeout: float,
        metrics_port: int = 0,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.command = list(command)
        self.metrics_port = metrics_port
        self.env = dict(os.environ if env is None else env)
        self.children = [_Child(i, f"{instance_base}-{i}") for i in range(1, count + 1)]
        self.stop_timeout = drain_timeout + _KILL_GRACE
        self.failure = ""
        self._stop_signal: int | None = None
        self._starting = True
        self._wake_r = -1
        self._wake_w = -1

    # ------------------------------------------------------------------ the loop

    def run(self) -> int:
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        previous = {sig: signal.signal(sig, self._on_signal) for sig in _STOP_SIGNALS}
        previous[signal.SIGCHLD] = signal.signal(signal.SIGCHLD, self._on_child)
        old_wakeup = signal.set_wakeup_fd(self._wake_w)
        try:
            return self._run()
        finally:
            self._kill_all()
            signal.set_wakeup_fd(old_wakeup)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            os.close(self._wake_r)
            os.close(self._wake_w)

    def _run(self) -> int:
        for child in self.children:
            self._start(child)
        while self._stop_signal is None:
            self._wait(self._next_timeout())
            self._reap()
            if self._starting:
                failed = next((c for c in self.children if c.failure), None)
                if failed is not None:
                    self.failure = failed.failure
                    self._stop(signal.SIGTERM)
                    return 1
                if all(c.ready for c in self.children):
                    self._starting = False
                    log.info(
                        "supervisor.ready",
                        processes=len(self.children),
                        pids=[c.proc.pid for c in self.children if c.proc is not None],
                    )
                continue
            now = time.monotonic()
            for child in self.children:
                if child.restart_at is not None and child.restart_at <= now:
                    self._start(child)
        return self._stop(self._stop_signal)

    def _next_timeout(self) -> float:
        due = [c.restart_at for c in self.children if c.restart_at is not None]
        if not due:
            return 1.0
        return max(0.0, min(1.0, min(due) - time.monotonic()))

    def _wait(self, timeout: float) -> None:
        """Until a signal, a child's word or ``timeout``; reads what children said."""
        links = {c.link.fileno(): c for c in self.children if c.link is not None}
        readable, _, _ = select.select([self._wake_r, *links], [], [], timeout)
        for fd in readable:
            if fd == self._wake_r:
                with contextlib.suppress(BlockingIOError):
                    while os.read(self._wake_r, 512):
                        pass
                continue
            self._hear(links[fd])

    def _hear(self, child: _Child) -> None:
        assert child.link is not None
        try:
            data = child.link.recv(4096)
        except OSError:
            data = b""
        if not data:
            child.link.close()
            child.link = None
            return
        child.buffer += data
        while b"\n" in child.buffer:
            line, child.buffer = child.buffer.split(b"\n", 1)
            if line == _READY:
                child.ready = True
                if child.starts > 1 and child.proc is not None:
                    log.info("supervisor.child_restarted", child=child.index, pid=child.proc.pid)
            elif line.startswith(_FAILED):
                child.failure = line.removeprefix(_FAILED).decode(errors="replace")

    # ------------------------------------------------------------------ children

    def _start(self, child: _Child) -> None:
        ours, theirs = socket.socketpair()
        env = {**self.env, "OTPD_SERVER__INSTANCE_ID": child.instance_id}
        if self.metrics_port:
            env["OTPD_METRICS__PORT"] = str(self.metrics_port + child.index - 1)
        argv = [*self.command, LINK_FLAG, str(theirs.fileno())]
        try:
            # argv is this interpreter running otpd, built by the command line
            child.proc = subprocess.Popen(argv, env=env, pass_fds=(theirs.fileno(),))  # noqa: S603
        finally:
            theirs.close()
        child.link = ours
        child.buffer = b""
        child.ready = False
        child.failure = ""
        child.started_at = time.monotonic()
        child.restart_at = None
        child.starts += 1

    def _reap(self) -> None:
        for child in self.children:
            if child.proc is None or child.proc.poll() is None:
                continue
            if child.link is not None:
                # its last words (``failed ...``) may still be unread; the end is closed
                # (or would block) once they are read
                child.link.setblocking(False)
                while child.link is not None:
                    self._hear(child)
            code = child.proc.returncode
            pid = child.proc.pid
            child.proc = None
            if not child.ready and not child.failure:
                child.failure = f"process {child.index} exited with status {code} while starting"
            if self._stop_signal is None and not self._starting:
                self._schedule_restart(child, pid, code)

    def _schedule_restart(self, child: _Child, pid: int, code: int) -> None:
        lived = time.monotonic() - child.started_at
        if child.ready and lived >= _HEALTHY_AFTER:
            child.failures = 0
        delay = (
            0.0
            if child.failures == 0
            else min(_BACKOFF_MAX, _BACKOFF_FIRST * 2 ** (child.failures - 1))
        )
        child.failures += 1
        child.restart_at = time.monotonic() + delay
        event = "supervisor.child_died" if child.ready else "supervisor.child_failed_to_start"
        log.warning(
            event,
            child=child.index,
            pid=pid,
            status=code,
            error=child.failure or None,
            restart_in=round(delay, 3),
        )

    # ------------------------------------------------------------------ stopping

    def _stop(self, sig: int) -> int:
        """Send ``sig`` to every child and wait for them to drain; 0 when all exited 0."""
        log.info("supervisor.stopping", signal=signal.Signals(sig).name)
        for child in self.children:
            child.restart_at = None
            if child.running and child.proc is not None:
                with contextlib.suppress(ProcessLookupError):
                    child.proc.send_signal(sig)
        deadline = time.monotonic() + self.stop_timeout
        codes: dict[int, int] = {}
        while True:
            for child in self.children:
                if child.proc is not None and child.proc.poll() is not None:
                    codes[child.index] = child.proc.returncode
                    child.proc = None
            if all(c.proc is None for c in self.children):
                break
            left = deadline - time.monotonic()
            if left <= 0:
                log.error(
                    "supervisor.children_did_not_stop",
                    children=[c.index for c in self.children if c.proc is not None],
                )
                self._kill_all()
                return 1
            self._wait(min(0.2, left))
        for child in self.children:
            if child.link is not None:
                child.link.close()
                child.link = None
        # a child stopped by the signal before it installed its own handler still stopped
        clean = {0, -sig}
        bad = {i: code for i, code in codes.items() if code not in clean}
        log.info("supervisor.stopped", exit_statuses=codes)
        if bad and not self.failure:
            index, code = min(bad.items())
            self.failure = f"process {index} exited with status {code} while stopping"
        return 1 if bad or self.failure else 0

    def _kill_all(self) -> None:
        for child in self.children:
            if child.proc is not None and child.proc.poll() is None:
                child.proc.kill()
                child.proc.wait()
            child.proc = None
            if child.link is not None:
                child.link.close()
                child.link = None

    # ------------------------------------------------------------------ signals

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self._stop_signal is None:
            self._stop_signal = signum
        else:
            # a second Ctrl-C or TERM while draining: pass it on, the children decide
            for child in self.children:
                if child.running and child.proc is not None:
                    with contextlib.suppress(ProcessLookupError):
                        child.proc.send_signal(signum)

    def _on_child(self, signum: int, frame: FrameType | None) -> None:
        # only wakes select() through the wakeup fd; _reap() looks at every child
        return None


def child_command(argv: Sequence[str]) -> list[str]:
    """``python -m otpd`` with ``argv`` (the ``serve`` arguments for one child)."""
    return [sys.executable, "-m", "otpd", *argv]
