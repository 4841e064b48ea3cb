"""The study store: one result file per cell at ``<key>.json``, failures, a journal of executions.

Layout of a store directory::

    .tl_spec_study_store      marker (written when the first run starts)
    <key>.json                the cell's result (a tl_spec result file; load_result reads it)
    <key>.failed.json         the last failure of a cell: error, traceback, attempts
    journal/<run>-<pid>.jsonl one line per cell attempt (start / done / error), per process
    runs/<run>.json           the summary of each run (counts, timings)
    identity_cache.json       file hashes of the models, by (path, size, mtime)

Results and failure records are written atomically (temporary file + rename), so an
interrupted run never leaves a half-written cell; journal lines are appended by the one process
that owns each journal file.

>>> store = Store("zoo.store")             # doctest: +SKIP
>>> store.has_result(cell.key)             # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from tl_spec.fileio import atomic_write_text
from tl_spec.study.keys import IdentityCache

__all__ = ["MARKER", "Store"]

MARKER = ".tl_spec_study_store"


class Store:
    """A directory of cell results keyed by cell key (see the module doc for the layout)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"Store({str(self.root)!r})"

    def create(self, study_name: str) -> None:
        """Make the directory and its marker (before the first cell runs)."""
        if self.root.exists() and not self.root.is_dir():
            from tl_spec.errors import TLSpecError

            raise TLSpecError(f"store {self.root} is a file; give a directory for the results "
                              "(--store DIR)")
        if not (self.root / MARKER).is_file():
            atomic_write_text(self.root / MARKER, json.dumps({"format": 1, "study": study_name}))

    def visible(self) -> bool:
        """Whether this process sees the store (a shared file system, on a cluster)."""
        return (self.root / MARKER).is_file()

    def result_path(self, key: str) -> Path:
        return self.root / f"{key}.json"

    def failure_path(self, key: str) -> Path:
        return self.root / f"{key}.failed.json"

    def has_result(self, key: str) -> bool:
        return self.result_path(key).is_file()

    def keys(self) -> set[str]:
        """Keys of every stored result."""
        if not self.root.is_dir():
            return set()
        return {p.name[:-5] for p in self.root.glob("*.json")
                if not p.name.endswith(".failed.json") and p.name != "identity_cache.json"}

    def failure(self, key: str) -> dict[str, Any] | None:
        """The failure record of ``key``, if its last attempt failed."""
        path = self.failure_path(key)
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {"error": f"unreadable failure record {path.name}"}

    def write_result(self, key: str, text: str) -> Path:
        """Store a cell's result atomically; forget any earlier failure of it."""
        path = atomic_write_text(self.result_path(key), text)
        self.failure_path(key).unlink(missing_ok=True)
        return path

    def write_failure(self, key: str, record: dict[str, Any]) -> Path:
        """Store a cell's failure record (error, traceback, attempts) atomically."""
        return atomic_write_text(self.failure_path(key), json.dumps(record, indent=1) + "\n")

    def log(self, run_id: str, event: dict[str, Any]) -> None:
        """Append one event to this process's journal of ``run_id``."""
        folder = self.root / "journal"
        folder.mkdir(parents=True, exist_ok=True)
        name = f"{run_id}-{socket.gethostname()}-{os.getpid()}.jsonl"
        line = json.dumps({"run": run_id, "t": time.time(), "pid": os.getpid(), **event})
        with open(folder / name, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")

    def events(self, run_id: str | None = None) -> list[dict[str, Any]]:
        """Journal events (of one run, or all), in time order; a torn last line is skipped."""
        out = []
        for path in sorted((self.root / "journal").glob("*.jsonl")):
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                if run_id is None or event.get("run") == run_id:
                    out.append(event)
        return sorted(out, key=lambda e: e.get("t", 0))

    def executions(self, run_id: str | None = None) -> list[str]:
        """Keys of every cell attempt started (in a run, or ever): the execution count."""
        return [e["key"] for e in self.events(run_id) if e.get("event") == "start"]

    def write_run(self, run_id: str, summary: dict[str, Any]) -> Path:
        """Store a run's summary."""
        return atomic_write_text(self.root / "runs" / f"{run_id}.json",
                                 json.dumps(summary, indent=1) + "\n")

    def identity_cache(self) -> IdentityCache:
        """The model-file hash cache kept in the store (read-only until the store exists)."""
        return IdentityCache(self.root / "identity_cache.json")
