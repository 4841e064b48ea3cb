"""The study store: one result file per cell at ``<key>.json``, failures, claims, a journal.

Layout of a store directory::

    .tl_spec_study_store      marker (written when the first run starts)
    <key>.json                the cell's result (a tl_spec result file; load_result reads it)
    <key>.failed.json         the last failure of a cell: error, traceback, attempts
    claims/<key>.claim        the run computing the cell now: host, pid, run id, time
    journal/<run>-<pid>.jsonl one line per cell attempt (start / done / error), per process
    runs/<run>.json           the summary of each run (counts, timings)
    identity_cache.json       file hashes of the models, by (path, size, mtime)

Results and failure records are written atomically (temporary file + rename), so an
interrupted run never leaves a half-written cell; journal lines are appended by the one process
that owns each journal file.

**Integrity.** Every result file records its cell's key (``provenance.study_cell.key``) and the
SHA-256 of its own content (``provenance.study_cell.sha256``: the hash of the canonical JSON of
the record without that field, see :func:`content_sha256`). :meth:`Store.check` verifies both:
a truncated or edited file is ``damaged``, a file whose recorded key is not its name (renamed,
or copied over another cell's) is ``swapped``; ``plan`` shows both as damaged, ``run``
recomputes them and ``collect`` refuses a swapped file. A file written before hashes were
recorded (no ``sha256``) is accepted when it parses and its key matches.

**Claims.** Before a run computes a cell it claims it: ``claims/<key>.claim`` created with
``O_CREAT | O_EXCL`` (atomic, also on NFS v3+), holding the claimer's host, pid, run id and
time; the claim goes when the result (or failure) is stored. A second run on the same store
skips cells claimed by another, so two concurrent runs never compute a cell twice. The run
touches its claims every :data:`HEARTBEAT` seconds; a claim is stale, and taken over, when its
process is dead (same host), or when it has not been touched for :data:`CLAIM_TIMEOUT` seconds
(another host's run that was killed or lost; a reused pid). Clocks of the hosts sharing a store
should agree to well within that timeout (claim ages compare file mtimes with this host's clock).

>>> store = Store("zoo.store")             # doctest: +SKIP
>>> store.check(cell.key)                  # doctest: +SKIP
('ok', '')
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from tl_spec.fileio import atomic_write_text
from tl_spec.study.keys import IdentityCache

__all__ = ["CLAIM_TIMEOUT", "HEARTBEAT", "MARKER", "Store", "content_sha256", "seal"]

MARKER = ".tl_spec_study_store"
CLAIM_TIMEOUT = 600.0  # seconds without a heartbeat after which a claim is stale
HEARTBEAT = 30.0  # seconds between a run's touches of the claims it holds
_TAKEOVER_TIMEOUT = 60.0  # a take-over lock older than this was left by a dead process

# runs going on in this process (a claim by this pid of a run not listed here is stale)
ACTIVE_RUNS: set[str] = set()


def content_sha256(record: dict[str, Any]) -> str:
    """SHA-256 of the canonical JSON (sorted keys, no spaces) of ``record`` less its own hash.

    >>> r = {"kind": "x", "provenance": {"study_cell": {"key": "k"}}}
    >>> content_sha256(r) == content_sha256(seal("k", json.dumps(r))[1])
    True
    """
    rec = copy.deepcopy(record)
    cell = (rec.get("provenance") or {}).get("study_cell")
    if isinstance(cell, dict):
        cell.pop("sha256", None)
    text = json.dumps(rec, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def seal(key: str, text: str) -> tuple[str, dict[str, Any]]:
    """A result's text with its cell key and content hash recorded (and the record)."""
    record = json.loads(text)
    cell = record.setdefault("provenance", {}).setdefault("study_cell", {})
    cell["key"] = key
    cell.pop("sha256", None)
    cell["sha256"] = content_sha256(record)
    return json.dumps(record, indent=1, allow_nan=False) + "\n", record


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


class Store:
    """A directory of cell results keyed by cell key (see the module doc for the layout)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self._checked: dict[str, tuple[tuple[int, int], tuple[str, str]]] = {}

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

    def check(self, key: str) -> tuple[str, str]:
        """The state of ``key``'s result file and why: ``absent``, ``ok``, ``damaged``
        (unreadable, truncated, or its content does not match its hash) or ``swapped`` (it
        records another cell's key); the reason is ``""`` when ``ok`` or ``absent``."""
        path = self.result_path(key)
        try:
            st = path.stat()
        except OSError:
            return "absent", ""
        tag = (st.st_size, st.st_mtime_ns)
        if key in self._checked and self._checked[key][0] == tag:
            return self._checked[key][1]
        state = self._verify(path, key)
        self._checked[key] = (tag, state)
        return state

    def _verify(self, path: Path, key: str) -> tuple[str, str]:
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            return "damaged", f"{path.name} cannot be read ({exc})"
        except ValueError as exc:
            return "damaged", f"{path.name} is not valid JSON (truncated?): {exc}"
        cell = (record.get("provenance") or {}).get("study_cell") if isinstance(record, dict) \
            else None
        if not isinstance(cell, dict) or not isinstance(cell.get("key"), str):
            return "damaged", f"{path.name} records no study cell key (provenance.study_cell.key)"
        if cell["key"] != key:
            return "swapped", (f"{path.name} holds the result of cell {cell['key']} (its "
                               f"provenance.study_cell.key), not of cell {key}")
        if "sha256" in cell and cell["sha256"] != content_sha256(record):
            return "damaged", (f"{path.name}: its content does not match the SHA-256 it "
                               "records (edited or corrupted)")
        return "ok", ""

    def has_result(self, key: str) -> bool:
        """Whether ``key`` has a sound stored result (see :meth:`check`)."""
        return self.check(key)[0] == "ok"

    def keys(self) -> set[str]:
        """Keys of every stored result file (sound or not)."""
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
        """Store a cell's result atomically, sealed with its key and content hash; forget any
        earlier failure of it."""
        sealed, _ = seal(key, text)
        path = atomic_write_text(self.result_path(key), sealed)
        self.failure_path(key).unlink(missing_ok=True)
        return path

    def write_failure(self, key: str, record: dict[str, Any]) -> Path:
        """Store a cell's failure record (error, traceback, attempts) atomically."""
        return atomic_write_text(self.failure_path(key), json.dumps(record, indent=1) + "\n")

    # ------------------------------------------------------------------ claims

    def claim_path(self, key: str) -> Path:
        return self.root / "claims" / f"{key}.claim"

    def holder(self, key: str) -> dict[str, Any] | None:
        """Who claims ``key`` (host, pid, run, time, and ``age``: seconds since its last
        heartbeat), or ``None``; a claim still being written reads as ``{"age": ...}``."""
        path = self.claim_path(key)
        try:
            age = time.time() - path.stat().st_mtime
            text = path.read_text(encoding="utf-8")
        except OSError:
            return None
        try:
            info = json.loads(text)
        except ValueError:
            info = {}
        return {**(info if isinstance(info, dict) else {}), "age": age}

    def stale(self, info: dict[str, Any], timeout: float = CLAIM_TIMEOUT) -> str | None:
        """Why the claim ``info`` (from :meth:`holder`) is stale, or ``None`` if it is live."""
        if info.get("host") == socket.gethostname() and isinstance(info.get("pid"), int):
            if info["pid"] == os.getpid():
                if info.get("run") not in ACTIVE_RUNS:
                    return f"run {info.get('run')} of this process is over"
                return None
            if not _alive(info["pid"]):
                return f"process {info['pid']} on this host is dead"
        if info["age"] > timeout:  # another host's run, or a reused pid: no heartbeat
            return f"no heartbeat for {info['age']:.0f} s (> {timeout:.0f} s)"
        return None

    def claim(self, key: str, run_id: str, timeout: float = CLAIM_TIMEOUT) -> bool:
        """Claim ``key`` for ``run_id`` (this process); ``False`` if another live run holds it.

        A stale claim (see :meth:`stale`) is taken over; a claim this run already holds is kept.
        """
        path = self.claim_path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        me = {"host": socket.gethostname(), "pid": os.getpid(), "run": run_id}
        for _ in range(3):
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
            except FileExistsError:
                info = self.holder(key)
                if info is not None and all(info.get(k) == v for k, v in me.items()):
                    return True
                if not self._take_over(key, run_id, timeout):
                    return False
                continue
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(json.dumps({**me, "time": time.time()}))
            return True
        return False

    def _take_over(self, key: str, run_id: str, timeout: float) -> bool:
        """Remove ``key``'s claim if it is stale (one process at a time); whether it is gone."""
        path = self.claim_path(key)
        lock = path.with_name(path.name + ".takeover")
        try:
            os.close(os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
        except FileExistsError:  # another run is taking it over (or died doing so)
            try:
                if time.time() - lock.stat().st_mtime > _TAKEOVER_TIMEOUT:
                    lock.unlink()
            except OSError:
                pass
            return False
        try:
            info = self.holder(key)
            if info is None:
                return True
            why = self.stale(info, timeout)
            if why is None:
                return False
            path.unlink(missing_ok=True)
            self.log(run_id, {"event": "takeover", "key": key, "why": why,
                               "from": {k: info.get(k) for k in ("host", "pid", "run")}})
            return True
        finally:
            lock.unlink(missing_ok=True)

    def release(self, key: str, run_id: str) -> None:
        """Drop ``run_id``'s claim of ``key`` (a claim taken over by another run is left)."""
        info = self.holder(key)
        if info and info.get("run") == run_id and info.get("pid") == os.getpid():
            self.claim_path(key).unlink(missing_ok=True)

    def heartbeat(self, keys: list[str]) -> None:
        """Touch the claims of ``keys`` (so other hosts see the run is alive)."""
        for key in keys:
            try:
                os.utime(self.claim_path(key))
            except OSError:
                pass

    # ------------------------------------------------------------------ journal

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
