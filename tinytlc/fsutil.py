"""Atomic writes: a crash or a bad input never leaves a half-written file where a good one was, and
nothing tinytlc did not write is ever deleted or replaced."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import glob
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

from tinytlc.errors import TinyTLError

# Written into a directory just before atomic_path moves it aside as .NAME.old: only a .NAME.old
# holding it is tinytlc's to put back or remove (a user's own .NAME.old is never touched).
OLD_MARK = ".tinytlc-old"


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike, *, is_dir: bool = False, replaceable: Callable[[Path], None] | None = None):
    """Yield a temporary path beside `dest`; on success rename it over `dest` in one step. An existing
    `dest` directory is replaced only if `replaceable(dest)` (called just before) does not raise."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    recover(dest)
    remove_stale(dest)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp{os.getpid()}.", dir=dest.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; a directory we keep follows the umask
    target = tmp if is_dir else tmp / dest.name
    try:
        yield target
        if is_dir and dest.exists():
            if replaceable is None:
                raise TinyTLError(f"{dest}: exists; tinytlc will not replace it")
            replaceable(dest)
            # Two renames: the old directory survives until the new one is complete.
            old = _old(dest)
            if old.exists() or old.is_symlink():
                if not (old / OLD_MARK).is_file():
                    raise TinyTLError(f"{old}: is in the way (tinytlc did not write it); move it elsewhere")
                shutil.rmtree(old)  # our own, left by a kill after the second rename
            (dest / OLD_MARK).touch()
            os.replace(dest, old)
            os.replace(target, dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(target, dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _old(dest: Path) -> Path:
    return dest.with_name(f".{dest.name}.old")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def recover(dest: Path) -> None:
    """A kill between atomic_path's two renames leaves the old directory as .NAME.old: put it back
    (only if tinytlc moved it there)."""
    old = _old(dest)
    if not dest.exists() and not old.is_symlink() and (old / OLD_MARK).is_file():
        os.replace(old, dest)
        (dest / OLD_MARK).unlink(missing_ok=True)


def remove_stale(dest: Path) -> None:
    """Temporary folders beside `dest` left by a tinytlc process that was killed (its pid is gone)."""
    for tmp in dest.parent.glob(f".{glob.escape(dest.name)}.tmp*.*"):
        pid = tmp.name[len(dest.name) + 5:].split(".", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def locked(directory: Path, command: str):
    """Hold an exclusive lock on `directory` while `command` writes into it (flock: the system drops it
    when the process ends, however it ends)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise TinyTLError(f"{directory}: another tinytlc {command} is running on it; wait for it to end") from None
        yield
    finally:
        os.close(fd)


def write_json(path: str | os.PathLike, obj) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2) + "\n")


def sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
