"""Atomic file and directory writes: a reader never sees half an artifact, a killed writer leaves the old one."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from pipeline.errors import SteptoolError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success rename it over `path` (files or directories).

    It only ever replaces what the writer makes: a file replaces a file, a folder a folder. An existing folder
    where a file is written (or a file, or anything else, where a folder is) is refused with one line before
    anything is renamed, and stays as it was: `--out` pointed at a user's folder never deletes it."""
    path = Path(path)
    if path.exists() and not (path.is_file() or path.is_dir()):
        raise SteptoolError(f"{path}: exists and is neither a file nor a folder (a device, a socket?): not replaced")
    for above in path.parents:  # the nearest part that exists must be a folder to write under
        if above.exists() or above.is_symlink():
            if not above.is_dir():
                raise SteptoolError(f"{above}: is not a folder, so {path} cannot be written under it (choose "
                                    "another path)")
            break
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix + ".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    tmp_path.unlink()  # the caller creates it, as a file or a directory
    try:
        yield tmp_path
        made, there = _kind(tmp_path), _kind(path)
        if there is not None and made != there:
            raise SteptoolError(f"{path}: is a {there}, and this writes a {made}: refusing to replace it (choose "
                                "another path, or remove it yourself)")
        if made == "folder" and path.is_symlink():  # a link the user made to a folder they keep elsewhere
            raise SteptoolError(f"{path}: is a link to a folder: refusing to replace it (choose another path, or "
                                "remove the link yourself)")
        if path.is_dir() and not path.is_symlink():
            old = path.with_name(f".{path.name}.old")
            if old.exists():
                shutil.rmtree(old)
            path.rename(old)
            tmp_path.rename(path)
            shutil.rmtree(old)
        else:
            os.replace(tmp_path, path)
    finally:
        if tmp_path.is_dir():
            shutil.rmtree(tmp_path, ignore_errors=True)
        elif tmp_path.exists():
            tmp_path.unlink()


def _kind(path: Path) -> str | None:
    """'folder', 'file' or None (nothing there; a symlink counts as what it points to)."""
    if path.is_dir():
        return "folder"
    return "file" if path.exists() else None


def write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> None:
    """Write `obj` as UTF-8 JSON atomically, keys in insertion order."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=indent, ensure_ascii=False) + "\n", encoding="utf-8")
