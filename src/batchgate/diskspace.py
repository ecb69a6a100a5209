"""Free-space checks for the embedded backends' folders (their readiness on a full disk)."""

from __future__ import annotations

import os
from pathlib import Path

from batchgate.errors import BackendError

# Below this much free space an embedded backend reports itself unable to take writes:
# a SQLite transaction or a result blob may need more than what is left.
MIN_FREE_BYTES = 1 << 20


def check_free_space(folder: Path, what: str) -> None:
    """Raise BackendError if `folder`'s file system has less than MIN_FREE_BYTES free."""
    try:
        stats = os.statvfs(folder)
    except OSError as exc:
        raise BackendError(
            f"{what} at {folder}: {exc}", public=f"the {what} cannot be checked: {exc.strerror}"
        ) from exc
    free = stats.f_bavail * stats.f_frsize
    if free < MIN_FREE_BYTES:
        raise BackendError(
            f"{what} at {folder}: only {free} bytes free", public=f"the {what}'s disk is full"
        )
