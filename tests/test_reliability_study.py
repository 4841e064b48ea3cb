"""Reliability of the study store (issue 16, items 3, 11, 12).

Damage: every result file records its cell key and a SHA-256 of its content; a truncated, edited
or swapped file is ``damaged`` in the plan and recomputed by the next run (to the same numbers),
and collect refuses a file that records another cell's key. Concurrency: two real processes
running the same study on one store compute every cell exactly once (counted from the journal);
stale claims (dead process, old heartbeat) are taken over, live ones respected. Files: atomic
writes give ``0o666 & ~umask`` (022 and 077), a replaced file keeps its mode. CSV: text cells
that a spreadsheet would run as formulas are quoted, numbers and Parquet untouched.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from tl_spec.errors import TLSpecError
from tl_spec.fileio import atomic_write_text
from tl_spec.study import collect, load_study, plan, run_study
from tl_spec.study.cli import main as study_main
from tl_spec.study.collect import csv_safe
from tl_spec.study.store import CLAIM_TIMEOUT, Store, content_sha256

from test_study import PROMPTS  # the same short prompt sets as the study tests

PROBE_STUDY = """\
name = "rel"
seeds = [{seeds}]
prompts = "short"
models = ["zoo:base-mha"]
{prompts}
[experiments.probe]
n_resamples = 100
"""


def _study_file(folder: Path, seeds: int = 3) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "study.toml"
    path.write_text(PROBE_STUDY.replace("{seeds}", ", ".join(map(str, range(seeds))))
                    .replace("{prompts}", PROMPTS), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def computed(tmp_path_factory: pytest.TempPathFactory):
    """A 3-cell probe study computed once: (study file, the collected table)."""
    path = _study_file(tmp_path_factory.mktemp("rel"))
    study = load_study(path)
    summary = run_study(study, threads=1)
    assert summary.counts["done"] == 3 and not summary.failed
    return path, collect(study, report=False).table


@pytest.fixture
def copy(computed, tmp_path):
    """A private copy of the computed study and store: (study, store, keys by seed)."""
    path, _ = computed
    shutil.copytree(path.parent, tmp_path / "s")
    study = load_study(tmp_path / "s" / "study.toml")
    keys = {c.seed: c.key for c in plan(study).cells}
    return study, Store(study.store), keys


# ---------------------------------------------------------------------------- integrity


def test_result_files_record_their_key_and_hash(copy):
    study, store, keys = copy
    for key in keys.values():
        record = json.loads(store.result_path(key).read_text(encoding="utf-8"))
        cell = record["provenance"]["study_cell"]
        assert cell["key"] == key and cell["sha256"] == content_sha256(record)
        assert len(cell["sha256"]) == 64 and store.check(key) == ("ok", "")


@pytest.mark.parametrize("damage", ["truncate", "edit"])
def test_damaged_cell_is_shown_and_recomputed_to_the_same_numbers(copy, computed, damage,
                                                                   capsys):
    study, store, keys = copy
    path = store.result_path(keys[1])
    text = path.read_text(encoding="utf-8")
    if damage == "truncate":
        path.write_text(text[: len(text) // 2], encoding="utf-8")
        why = "not valid JSON"
    else:  # valid JSON, one number changed
        record = json.loads(text)
        record["response_pct"] = record["response_pct"] + 1.0
        path.write_text(json.dumps(record, indent=1), encoding="utf-8")
        why = "does not match the SHA-256"
    p = plan(study)
    assert p.status == {keys[0]: "done", keys[1]: "damaged", keys[2]: "done"}
    assert p.counts() == {"done": 2, "failed": 0, "damaged": 1, "todo": 0}
    assert why in p.damaged[keys[1]]["reason"]
    assert study_main(["study", "plan", str(study.source)]) == 0
    out = capsys.readouterr().out
    assert "1 damaged" in out and f"{keys[1][:12]}  damaged" in out
    row = collect(study, report=False).table.set_index("seed").loc[1]
    assert row["status"] == "missing" and why in row["error"]
    summary = run_study(study, threads=1)
    assert store.executions(summary.run_id) == [keys[1]]
    assert plan(study).counts()["done"] == 3
    pd.testing.assert_frame_equal(collect(study, report=False).table, computed[1])


def test_swapped_cells_are_refused_by_collect_and_recomputed_by_run(copy, computed):
    study, store, keys = copy
    a, b = store.result_path(keys[0]), store.result_path(keys[2])
    tmp = a.with_name("swap.tmp")
    a.rename(tmp)
    b.rename(a)
    tmp.rename(b)
    p = plan(study)
    assert p.status[keys[0]] == p.status[keys[2]] == "damaged"
    assert p.damaged[keys[0]]["state"] == "swapped"
    with pytest.raises(TLSpecError) as err:
        collect(study, report=False)
    assert keys[0] in str(err.value) and keys[2] in str(err.value)
    assert study_main(["study", "collect", str(study.source), "--no-report"]) == 2
    summary = run_study(study, threads=1)
    assert sorted(store.executions(summary.run_id)) == sorted([keys[0], keys[2]])
    pd.testing.assert_frame_equal(collect(study, report=False).table, computed[1])


# ---------------------------------------------------------------------------- claims


def _claim_file(store: Store, key: str, **info) -> Path:
    path = store.claim_path(key)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(info), encoding="utf-8")
    return path


def test_live_claim_is_left_to_its_run_and_stale_ones_are_taken_over(copy):
    study, store, keys = copy
    for key in keys.values():  # every cell to compute again
        store.result_path(key).unlink()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = socket.gethostname()
    _claim_file(store, keys[0], host="other-host", pid=1, run="live", time=time.time())
    _claim_file(store, keys[1], host=host, pid=dead.pid, run="dead", time=time.time())
    old = _claim_file(store, keys[2], host="other-host", pid=1, run="old", time=0)
    past = time.time() - CLAIM_TIMEOUT - 60
    os.utime(old, (past, past))
    summary = run_study(study, threads=1)
    assert sorted(store.executions(summary.run_id)) == sorted([keys[1], keys[2]])
    assert list(summary.elsewhere) == [keys[0]] and "live" in summary.elsewhere[keys[0]]
    assert summary.counts["elsewhere"] == 1
    takeovers = {e["key"]: e for e in store.events(summary.run_id) if e["event"] == "takeover"}
    assert set(takeovers) == {keys[1], keys[2]}
    assert "dead" in takeovers[keys[1]]["why"] and "heartbeat" in takeovers[keys[2]]["why"]
    # the run released its own claims; the live one is untouched
    assert sorted(p.name for p in (store.root / "claims").iterdir()) == [f"{keys[0]}.claim"]
    assert plan(study).status[keys[0]] == "todo"


def test_claims_are_exclusive_and_released_by_their_owner(tmp_path, monkeypatch):
    monkeypatch.setattr("tl_spec.study.store.ACTIVE_RUNS", {"run-a", "run-b"})
    store = Store(tmp_path)
    assert store.claim("k", "run-a") and store.claim("k", "run-a")  # held, and kept
    assert not store.claim("k", "run-b")
    assert store.holder("k")["run"] == "run-a"
    store.release("k", "run-b")  # not its claim: left
    assert store.claim_path("k").exists()
    store.release("k", "run-a")
    assert not store.claim_path("k").exists()
    assert store.claim("k", "run-b") and not store.claim("k", "run-a")
    monkeypatch.setattr("tl_spec.study.store.ACTIVE_RUNS", {"run-a"})  # run-b is over
    assert store.claim("k", "run-a") and store.holder("k")["run"] == "run-a"
    # the heartbeat keeps a claim fresh; without it, it goes stale after CLAIM_TIMEOUT
    past = time.time() - CLAIM_TIMEOUT - 60
    os.utime(store.claim_path("k"), (past, past))
    other = {**store.holder("k"), "host": "other-host"}
    assert "heartbeat" in store.stale(other)
    store.heartbeat(["k"])
    assert store.holder("k")["age"] < 60 and store.stale({**store.holder("k"),
                                                          "host": "other-host"}) is None


_RUNNER = """
import sys, time
from pathlib import Path
from tl_spec.study import load_study, run_study
study = load_study(sys.argv[1])
ready, go = Path(sys.argv[2]), Path(sys.argv[3])
ready.write_text("ready")
while not go.exists():
    time.sleep(0.01)
summary = run_study(study, threads=1)
print(summary.run_id, len(summary.done), len(summary.elsewhere))
"""


def test_two_concurrent_runs_compute_every_cell_exactly_once(tmp_path):
    path = _study_file(tmp_path / "two", seeds=10)
    study = load_study(path)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    go = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", _RUNNER, str(path), str(tmp_path / f"r{i}"),
                               str(go)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(2)]
    deadline = time.monotonic() + 300
    while not all((tmp_path / f"r{i}").exists() for i in range(2)):
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs)
        time.sleep(0.02)
    go.write_text("go")  # both start their run at once
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    store = Store(study.store)
    keys = sorted(c.key for c in plan(study).cells)
    assert sorted(store.executions()) == keys  # each of the 10 cells computed exactly once
    assert plan(study).counts()["done"] == 10
    per_run = {}
    for line in (o[0].split() for o in outs):
        per_run[line[0]] = (int(line[1]), int(line[2]))
    assert sum(done for done, _ in per_run.values()) == 10
    assert all(done + left == 10 for done, left in per_run.values())
    assert all(done >= 1 for done, _ in per_run.values()), per_run  # the runs overlapped
    assert not list((store.root / "claims").glob("*.claim"))


# ---------------------------------------------------------------------------- file modes


@pytest.mark.parametrize("umask,expected", [(0o022, 0o644), (0o077, 0o600)])
def test_atomic_writes_respect_the_umask(tmp_path, umask, expected):
    saved = os.umask(umask)
    try:
        new = atomic_write_text(tmp_path / "new.txt", "a")
        assert stat.S_IMODE(new.stat().st_mode) == expected
        kept = tmp_path / "kept.txt"
        kept.write_text("old")
        kept.chmod(0o640)
        atomic_write_text(kept, "new")
        assert stat.S_IMODE(kept.stat().st_mode) == 0o640 and kept.read_text() == "new"
        result = Store(tmp_path / "store").write_result(
            "k", json.dumps({"kind": "x", "provenance": {}}))
        assert stat.S_IMODE(result.stat().st_mode) == expected
    finally:
        os.umask(saved)


# ---------------------------------------------------------------------------- CSV injection


def test_csv_safe_quotes_formula_text_and_leaves_numbers():
    frame = pd.DataFrame({"model": ["=HYPERLINK(\"http://x\")", "+1", "-2", "@SUM(A1)", "\tx",
                                    "\rx", "base-mha", None],
                          "mixed": [-1, "-1", 2.5, "=1", "a-b", -3.5, None, "ok"],
                          "value": [-1.5, -2.0, 0.0, 3.0, -4.0, 5.0, -6.0, float("nan")],
                          "seed": pd.array([-1, 0, 1, 2, 3, 4, 5, None], dtype="Int64")})
    safe = csv_safe(frame)
    assert safe["model"].tolist()[:7] == ["'=HYPERLINK(\"http://x\")", "'+1", "'-2", "'@SUM(A1)",
                                          "'\tx", "'\rx", "base-mha"]
    assert pd.isna(safe["model"][7])
    assert safe["mixed"].tolist()[:6] == [-1, "'-1", 2.5, "'=1", "a-b", -3.5]
    assert pd.isna(safe["mixed"][6]) and safe["mixed"][7] == "ok"
    pd.testing.assert_series_equal(safe["value"], frame["value"])
    pd.testing.assert_series_equal(safe["seed"], frame["seed"])
    assert frame["model"][0].startswith("=")  # the input is not modified


HOSTILE = """\
name = "hostile"
prompts = "short"
models = [{ name = "=HYPERLINK(\\"http://evil\\")", path = "zoo:base-mha" },
          { name = "@SUM(A1)", path = "zoo:base-gqa" },
          { name = "-cmd", path = "./no-such-model" }]
retries = 0
{prompts}
[experiments.si]
"""


def test_collect_csv_neutralises_hostile_labels(tmp_path):
    path = tmp_path / "hostile.toml"
    path.write_text(HOSTILE.replace("{prompts}", PROMPTS), encoding="utf-8")
    study = load_study(path)
    run_study(study, threads=1, retry_delay=0.0)
    out = tmp_path / "out"
    got = collect(study, out=out, report=False)
    labels = ['=HYPERLINK("http://evil")', "@SUM(A1)", "-cmd"]
    assert sorted(got.table["model"]) == sorted(labels)  # the table keeps them verbatim
    with open(out / "study_table.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert sorted(r["model"] for r in rows) == sorted("'" + x for x in labels)
    for r in rows:  # numbers stay numbers
        assert r["value"] == "" or float(r["value"]) > 0
    with open(out / "summary_si_by_model.csv", newline="", encoding="utf-8") as fh:
        assert sorted(r["model"] for r in csv.DictReader(fh)) == sorted("'" + x
                                                                         for x in labels[:2])
    if importlib.util.find_spec("pyarrow"):
        parquet = pd.read_parquet(out / "study_table.parquet")
        assert sorted(parquet["model"]) == sorted(labels)
