"""What the main job leaves on disk: Triton's cache of compiled kernels (the offline compile
report and the GPU benchmark fill it; reruns reuse it)."""

from __future__ import annotations

import os
from pathlib import Path


def triton_cache_dir() -> Path:
    """Where Triton keeps compiled kernels: ``TRITON_CACHE_DIR``, by default ~/.triton/cache."""
    try:
        from triton import knobs

        return Path(knobs.cache.dir)
    except (ImportError, AttributeError):
        return Path(os.environ.get("TRITON_CACHE_DIR", Path.home() / ".triton" / "cache"))


def folder_bytes(path: Path) -> int:
    """Total size of the files under ``path`` (0 when it does not exist)."""
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else 0
