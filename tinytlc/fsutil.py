"""Atomic writes: a crash or a bad input never leaves a half-written file where a good one was."""

from __future__ import annotations

import contextlib
import hashlib
import glob
import json
import os
import shutil
import tempfile
from pathlib import Path


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike, *, is_dir: bool = False):
    """Yield a temporary path beside `dest`; on success rename it over `dest` in one step."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    recover(dest)
    remove_stale(dest)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp{os.getpid()}.", dir=dest.parent))
    target = tmp if is_dir else tmp / dest.name
    try:
        yield target
        if is_dir and dest.exists():
            # Two renames: the old directory survives until the new one is complete.
            old = dest.with_name(f".{dest.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(dest, old)
            os.replace(target, dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(target, dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def recover(dest: Path) -> None:
    """A kill between atomic_path's two renames leaves the old directory as .NAME.old: put it back."""
    old = dest.with_name(f".{dest.name}.old")
    if not dest.exists() and old.is_dir():
        os.replace(old, dest)


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


def write_json(path: str | os.PathLike, obj) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2) + "\n")


def sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
