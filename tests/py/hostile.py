"""The hostile-store generator: shapes a store author (or a careless operator) can give a store,
made on a real store directory so that new code meets them too. Each function damages one thing
of an existing store in place and returns what it made. tests/py/test_hostile_*.py use them
against the daemon, every command that reads a store, and the docker tools.

Shapes (add new ones here, one function each, with the issue they come from):
"""
from __future__ import annotations

import os
from pathlib import Path


def fifo_at(store: Path, rel: str) -> Path:
    """A FIFO where a regular file (catalog generation, index, diff/ file, link,
    repositories.json, ...) should be. Nothing may ever open it blocking."""
    p = Path(store) / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    if p.exists() or p.is_symlink():
        p.unlink()
    os.mkfifo(p)
    return p


def sparse_at(store: Path, rel: str, size: int) -> Path:
    """A sparse file of `size` bytes (reads as zeros) where a small metadata object should be."""
    p = Path(store) / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    if p.exists() or p.is_symlink():
        p.unlink()
    with open(p, "wb") as f:
        f.truncate(size)
    return p
