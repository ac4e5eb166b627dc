"""Watching set folders for new or changed migration files, without an extra dependency.

A stat per file per poll is cheap next to a catch-up, and works on every
filesystem (ConfigMap mounts and network shares included, where inotify does not).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

__all__ = ["Watcher", "signature"]


def signature(folder: Path) -> tuple[tuple[str, int, int], ...] | None:
    """(name, size, mtime) of every entry of a set folder and of its migration folders; None when unreadable."""
    entries: list[tuple[str, int, int]] = []
    try:
        with os.scandir(folder) as it:
            for entry in it:
                if entry.name.startswith(".") or entry.name == "__pycache__":
                    continue  # editors' and copy tools' temporary files are hidden; discovery ignores them too
                try:
                    if entry.is_dir():
                        entries.append((entry.name + "/", 0, 0))
                        with os.scandir(entry.path) as sub:
                            for child in sub:
                                if not child.name.startswith(".") and child.name != "__pycache__":
                                    st = child.stat()
                                    entries.append((f"{entry.name}/{child.name}", st.st_size, st.st_mtime_ns))
                    else:
                        st = entry.stat()
                        entries.append((entry.name, st.st_size, st.st_mtime_ns))
                except OSError:
                    entries.append((entry.name, -1, -1))  # vanished mid-scan: a change like any other
    except OSError:
        return None
    return tuple(sorted(entries))


class Watcher:
    """Polls set folders (a stat per file, no extra dependency); reports a set once its changes have settled.

    A set is reported when one scan saw a change and the next saw the same sizes
    and mtimes again, so a file still being written is never handed to a run.
    """

    def __init__(self, folders: dict[str, Path]):
        self._lock = threading.Lock()
        self._folders: dict[str, Path] = {}
        self._seen: dict[str, Any] = {}
        self._dirty: set[str] = set()
        self.set_folders(folders)

    def set_folders(self, folders: dict[str, Path]) -> None:
        """Watch these sets; a new or moved folder's current content is the baseline, not a change."""
        fresh = {name: signature(folder) for name, folder in folders.items() if self._folders.get(name) != folder}
        with self._lock:
            for name in list(self._folders):
                if name not in folders:
                    self._seen.pop(name, None)
                    self._dirty.discard(name)
            for name, sig in fresh.items():
                self._seen[name] = sig
                self._dirty.discard(name)
            self._folders = dict(folders)

    def scan(self) -> list[str]:
        """One poll: the sets whose files changed and have held still since the previous poll."""
        with self._lock:
            folders = list(self._folders.items())
        settled = []
        for name, folder in folders:
            sig = signature(folder)
            with self._lock:
                if self._folders.get(name) != folder:
                    continue
                if sig != self._seen.get(name):
                    self._seen[name] = sig
                    self._dirty.add(name)
                elif name in self._dirty:
                    self._dirty.discard(name)
                    settled.append(name)
        return settled

    def settled(self, name: str) -> bool:
        """Whether a run may read the set now: unchanged since the last poll, with no change still settling.

        A change seen here counts as seen by a poll, so the next poll that finds it
        unchanged reports the set.
        """
        with self._lock:
            folder = self._folders.get(name)
        if folder is None:
            return True
        sig = signature(folder)
        with self._lock:
            if sig != self._seen.get(name):
                self._seen[name] = sig
                self._dirty.add(name)
                return False
            return name not in self._dirty
