"""Publishing the built-in model folders (tiny SD stack, stand-in CLIP) safely.

A folder is built under a temporary sibling name and renamed into place, so a crash never
leaves a half-written model and concurrent builders (several ``accelerate`` processes, two
``kedro run``s) do not clash: the first complete folder wins and the others keep it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def read_marker(folder: Path, marker_name: str) -> dict[str, Any] | None:
    """The JSON marker a built-in folder carries, or ``None`` if it has none (or it is unreadable)."""
    try:
        return json.loads((folder / marker_name).read_text())
    except (OSError, ValueError):
        return None


def marker_matches(folder: Path, marker_name: str, builder_version: int, seed: int | None = None) -> bool:
    """Whether ``folder``'s marker says this builder version built it (and, if given, from ``seed``)."""
    marker = read_marker(folder, marker_name)
    if not marker or marker.get("builder_version") != builder_version:
        return False
    return seed is None or marker.get("seed") == seed


def refuse_foreign_folder(out: Path, marker_name: str, what: str, setting: str) -> None:
    """Raise ``ValueError`` if ``out`` holds files but no marker: never overwrite the user's folder."""
    if out.exists() and any(out.iterdir()) and read_marker(out, marker_name) is None:
        raise ValueError(f"{out} is not empty and is not a {what} built by machining_t2v; "
                         f"refusing to overwrite it (choose another {setting})")


def publish_folder(out: Path, write: Callable[[Path], None], marker_name: str, marker: dict[str, Any],
                   is_current: Callable[[Path], bool]) -> Path:
    """Build ``out`` with ``write(tmp_folder)`` plus a JSON ``marker`` file, then rename it into place.

    ``is_current(out)`` tells whether a complete, up-to-date folder is already there (for
    example built by another process meanwhile); an out-of-date one is replaced.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.building-", dir=out.parent))
    os.chmod(tmp, 0o755)  # mkdtemp's 0700 would otherwise become the model folder's mode
    try:
        write(tmp)
        (tmp / marker_name).write_text(json.dumps(marker, indent=2))
        if is_current(out):
            return out  # another process finished first; keep its copy (it may be being read)
        if out.exists():
            # Only an empty folder or an out-of-date built-in folder (it has our marker) gets here.
            stale = out.with_name(f".{out.name}.stale-{os.getpid()}")
            os.replace(out, stale)
            shutil.rmtree(stale, ignore_errors=True)
        try:
            os.replace(tmp, out)
        except OSError:
            if not is_current(out):  # another process won the race; its folder is as good as ours
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
