"""Atomic writes, the one way every output of the project is written: a hidden temporary file beside the final
one, named after its writer, then a rename (never a half-written file), and the sweep that removes the
temporary files of writers that died (a run killed mid-write) without touching a live run's.

Temporary names: ``.<final name>.<host>-<pid>.<8 random>`` (``TEMP_RE``), with ``.tmp<suffix>`` appended by
``atomic_path`` for writers that insist on an extension (numpy's savez, matplotlib's animation writers)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import tempfile
import time
from pathlib import Path

#: .<final name>.<host>-<pid>.<mkstemp suffix>[.tmp<suffix>]: a temporary file of an atomic write
TEMP_RE = re.compile(r"^\.(?P<final>.+)\.(?P<host>[A-Za-z0-9_]+)-(?P<pid>\d+)\.(?P<rand>[A-Za-z0-9_]{8})"
                     r"(?:\.tmp(?:\.[A-Za-z0-9]+)*)?$")
#: a write never takes this long: another host's temporary file this old belongs to a dead run [s]
STALE_TEMP_S = 24 * 3600.0


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def writer_tag() -> str:
    """<host>-<pid> of this process, as temporary files name their writer."""
    host = re.sub(r"[^A-Za-z0-9_]", "_", socket.gethostname().split(".")[0]) or "host"
    return f"{host}-{os.getpid()}"


def temp_beside(final: Path, keep_suffix: bool = False) -> tuple[int, str]:
    """(fd, path) of a hidden temporary file next to ``final``, named after its writer (host, pid), with the
    permissions a plain open() would give (mkstemp's are 0600, which would hide shared outputs from the rest
    of a lab); keep_suffix: end the name with ``.tmp<final's suffix>``."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    suffix = f".tmp{final.suffix}" if keep_suffix else ""
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.{writer_tag()}.", suffix=suffix, dir=final.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())
    except BaseException:
        discard(fd, tmp)
        raise
    return fd, tmp


def discard(fd: int | None, tmp) -> None:
    """Close (when open) and delete a temporary file of a write that did not finish."""
    if fd is not None:
        try:
            os.close(fd)
        except OSError:
            pass
    Path(tmp).unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(final):
    """``with atomic_path(out) as tmp: writer(tmp)``: a temporary path beside ``out`` (same suffix) that is
    renamed to ``out`` when the block ends without error, and deleted when it raises."""
    final = Path(final)
    fd, tmp = temp_beside(final, keep_suffix=True)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, final)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_bytes(path, data: bytes) -> None:
    """Write data to path atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path, text: str) -> None:
    write_bytes(path, text.encode())


def write_json(path, obj, indent: int = 2) -> None:
    """obj as JSON (numpy scalars and arrays as numbers and lists), atomically."""
    write_bytes(path, (json.dumps(obj, indent=indent, default=jsonable) + "\n").encode())


def jsonable(o):
    """json.dumps' default: numpy scalars and arrays as Python numbers and lists, anything else as str."""
    try:
        import numpy as np
        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
    except ImportError:
        pass
    return str(o)


def _writer_alive(pid: int) -> bool | None:
    """True when process ``pid`` of this host runs, False when it has exited (a zombie, killed and not yet
    reaped, counts as exited), None when it runs as another user."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return None
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def remove_stale_temps(out_dir, ended_pids=()) -> list[Path]:
    """Delete the temporary files of atomic writes whose writer is gone (a run killed mid-write): this host's
    when the process no longer exists (or is in ``ended_pids``: processes about to exit, such as an
    interrupted run and the workers it stopped), another host's when older than STALE_TEMP_S. Temporary files
    of live runs writing into the same folder are left alone. Returns the files removed."""
    host = writer_tag().rsplit("-", 1)[0]
    ended = {int(p) for p in ended_pids}
    removed = []
    for p in Path(out_dir).rglob(".*"):
        m = TEMP_RE.match(p.name)
        if not m or not p.is_file():
            continue
        if m["host"] == host:
            if int(m["pid"]) not in ended and _writer_alive(int(m["pid"])) is not False:
                continue  # still running (or another user's)
        elif time.time() - p.stat().st_mtime < STALE_TEMP_S:
            continue
        p.unlink(missing_ok=True)
        removed.append(p)
    return removed
