"""One training run per output folder: a lock file holding the owner's pid.

``RunLock(out_dir)`` creates ``out_dir/run.lock`` with ``O_CREAT | O_EXCL`` (atomic:
of two processes racing, exactly one creates it) and writes ``pid host start-time``.
A second run into the same folder gets :class:`RunLockedError` naming the owner.
A lock whose pid is no longer alive on this host (the owner was SIGKILLed, the
machine rebooted) is stale: it is taken over with a warning. The lock is removed
when the context exits, on an exception too; a SIGKILL leaves it (stale).

A lock written on another host (a shared file system) is never taken over
automatically, since that pid cannot be checked from here: delete it by hand.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
import warnings

LOCK_NAME = "run.lock"


class RunLockedError(RuntimeError):
    """Another live process holds the output folder's lock."""


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    # A zombie (killed but not reaped by its parent) holds nothing any more.
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    except OSError:
        return True


def _read_owner(path: str) -> tuple[int, str, str]:
    try:
        with open(path) as f:
            parts = f.read().split()
    except OSError:
        return -1, "", ""
    pid = int(parts[0]) if parts and parts[0].isdigit() else -1
    host = parts[1] if len(parts) > 1 else ""
    started = " ".join(parts[2:]) if len(parts) > 2 else ""
    return pid, host, started


class RunLock:
    """Context manager holding ``out_dir/run.lock`` for this process."""

    def __init__(self, out_dir: str | os.PathLike, take_over_own: bool = False) -> None:
        """``take_over_own``: a lock that this very process left (a ``fit`` that ended by
        an exception before its callbacks could release it) is taken over instead of
        refused (:class:`mrcnn.engine.callbacks.HoldRunLock`)."""
        self.out_dir = os.fspath(out_dir)
        self.take_over_own = take_over_own
        self.path = os.path.join(self.out_dir, LOCK_NAME)
        self.held = False

    def acquire(self) -> RunLock:
        os.makedirs(self.out_dir, exist_ok=True)
        host = socket.gethostname()
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                pid, owner_host, started = _read_owner(self.path)
                if pid == os.getpid() and owner_host == host and not self.take_over_own:
                    raise RunLockedError(f"{self.out_dir} is already locked by this process") from None
                if owner_host and owner_host != host:
                    raise RunLockedError(
                        f"output folder {self.out_dir} is in use by pid {pid} on host {owner_host} "
                        f"(since {started}); if that run is dead, delete {self.path}"
                    ) from None
                if pid > 0 and pid != os.getpid() and _pid_alive(pid):
                    raise RunLockedError(
                        f"output folder {self.out_dir} is in use by another training run (pid {pid}, "
                        f"since {started}); wait for it, stop it, or choose another --out"
                    ) from None
                owner = ("left by an earlier fit of this process" if pid == os.getpid()
                         else f"of pid {pid} (no longer running)")
                warnings.warn(
                    f"taking over stale lock {self.path} {owner}",
                    UserWarning,
                    stacklevel=2,
                )
                with contextlib.suppress(FileNotFoundError):
                    os.remove(self.path)
                continue
            with os.fdopen(fd, "w") as f:
                f.write(f"{os.getpid()} {host} {time.strftime('%Y-%m-%dT%H:%M:%S')}\n")
                f.flush()
                os.fsync(f.fileno())
            self.held = True
            return self
        raise RunLockedError(f"could not take the lock {self.path} (another run keeps re-creating it)")

    def release(self) -> None:
        if self.held:
            pid, _, _ = _read_owner(self.path)
            if pid == os.getpid():
                with contextlib.suppress(OSError):
                    os.remove(self.path)
            self.held = False

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


__all__ = ["RunLock", "RunLockedError", "LOCK_NAME"]
