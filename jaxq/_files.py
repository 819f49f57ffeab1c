"""Writing a file whole or not at all: to a temporary name beside it, then renamed into place, so
a run killed mid-write leaves the old file (or none), never half of one."""

from __future__ import annotations

import os
import tempfile


def write_atomic(path: str, data: bytes):
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    with tempfile.NamedTemporaryFile("wb", dir=folder, delete=False, suffix=".tmp") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    # A temporary file is private (0600); give the result the permissions of any new file.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(f.name, 0o666 & ~umask)
    os.replace(f.name, path)
