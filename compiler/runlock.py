"""One run folder, one writer: an exclusive lock (``.bitnas.lock``) that names the process holding it.

The lock is an ``flock`` on the lock file, so the kernel releases it when its process ends, however it
ends (kill -9 included): a lock never outlives its writer. Within one process it is re-entrant (every
``Project`` on a folder shares it); the CLI releases what a command took when the command returns.
"""

from __future__ import annotations

import fcntl
import json
import os
import sys
import time
from pathlib import Path

from bitnas.errors import UserError

LOCK_FILE = ".bitnas.lock"
_held: dict[Path, int] = {}  # run folder -> the open lock file's descriptor


def hold(root: Path, what: str = "") -> None:
    """Take the run folder's lock (or keep it, if this process has it); refuse, naming the holder, when
    another process has it."""
    root = Path(root).resolve()
    if root in _held:
        return
    root.mkdir(parents=True, exist_ok=True)
    path = root / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _describe(fd)
        os.close(fd)
        raise UserError(f"{root}: run folder in use by {holder}; one process writes a run folder at a time "
                        "(wait for it, or stop it)") from None
    except OSError as exc:  # a file system without locks: say so rather than write unguarded
        os.close(fd)
        raise UserError(f"{path}: cannot lock the run folder ({exc.strerror})") from None
    info = {"pid": os.getpid(), "command": what or " ".join(["bitnas", *sys.argv[1:]])[:300],
            "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(info).encode(), 0)
    _held[root] = fd


def _describe(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (OSError, ValueError):
        info = {}
    if not isinstance(info, dict) or "pid" not in info:
        return "another process"
    return f"process {info['pid']} ({info.get('command', '?')}, since {info.get('since', '?')})"


def release_all() -> None:
    """Release every run-folder lock this process holds (the end of a CLI command)."""
    for root, fd in list(_held.items()):
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)
            _held.pop(root, None)
