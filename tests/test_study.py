"""Studies: spec parsing with line-numbered errors, keys, the resumable runner, executors, collect.

The zoo study (2 twin pairs x {delta, probe} x 3 seeds = 15 cells) runs on the local executor
and on Dask (a LocalCluster of 2 processes) and must give identical tables; a runner killed
mid-study resumes computing only the missing cells (counted from the store's journal); a cell
whose model does not exist fails after its retries without stopping the others, and collect
marks it missing; changing one option reruns only the cells it reaches.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from tl_spec.errors import TLSpecError
from tl_spec.study import collect, load_study, plan, run_study, study_from_dict
from tl_spec.study.cli import add_parser
from tl_spec.study.cli import main as study_main
from tl_spec.study.cli import run as cli_run
from tl_spec.study.runner import make_tasks
from tl_spec.study.store import Store

REPO = Path(__file__).resolve().parents[1]

# short prompts keep every cell well under a second on 2 cores
PROMPTS = """\
[prompt_sets]
short = ["The cat sat on the mat and looked at the door.",
         "Functions return values to the code that called them.",
         "A list keeps its items in the order they were added.",
         "The river flows past the old mill towards the sea."]
"""

ZOO_STUDY = """\
name = "zoo"
seeds = [0, 1, 2]
prompts = "short"
{prompts}
[[twins]]
base = "zoo:base-gqa"
tuned = "zoo:gqa-dpo-1"
family = "gqa-dpo"

[[twins]]
base = "zoo:base-gqa"
tuned = "zoo:gqa-sft-1"
family = "gqa-sft"

[experiments.delta]
n_resamples = 100

[experiments.probe]
n_resamples = 100
"""


def _write(tmp: Path, text: str, name: str = "study.toml") -> Path:
    path = tmp / name
    path.write_text(text.replace("{prompts}", PROMPTS), encoding="utf-8")
    return path


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tl-spec")
    add_parser(parser.add_subparsers(dest="command"))
    return parser


@pytest.fixture(scope="module")
def zoo_local(tmp_path_factory: pytest.TempPathFactory):
    """The zoo study run once on the local executor (this process): (study, summary)."""
    path = _write(tmp_path_factory.mktemp("zoo_local"), ZOO_STUDY)
    study = load_study(path)
    return study, run_study(study, executor="local", workers=1, threads=1)


# ---------------------------------------------------------------------------- spec and plan


def test_plan_expands_cells_with_stable_keys(tmp_path):
    path = _write(tmp_path, ZOO_STUDY)
    p = plan(load_study(path))
    assert len(p.cells) == 15
    assert p.counts() == {"done": 0, "failed": 0, "damaged": 0, "todo": 15}
    assert [c.label for c in p.cells[:2]] == ["delta base-gqa->gqa-dpo-1 short seed=0",
                                              "delta base-gqa->gqa-dpo-1 short seed=1"]
    assert {c.models for c in p.cells if c.kind == "probe"} == {
        ("base-gqa",), ("gqa-dpo-1",), ("gqa-sft-1",)}
    assert not (tmp_path / "zoo.store").exists()  # planning writes nothing
    # same content, different names and an explicit default: the same keys
    renamed = _write(tmp_path, ZOO_STUDY.replace('base = "zoo:base-gqa"',
                                                 'base = { name = "B", path = "zoo:base-gqa" }', 1)
                     .replace("n_resamples = 100\n\n[experiments.probe]",
                              "n_resamples = 100\nconfidence = 0.95\n\n[experiments.probe]"),
                     "renamed.toml")
    assert {c.key for c in plan(load_study(renamed)).cells} == {c.key for c in p.cells}


def test_python_construction_matches_the_file(tmp_path):
    data = {"name": "zoo", "seeds": [0, 1, 2], "prompts": "short",
            "prompt_sets": {"short": ["The cat sat on the mat and looked at the door.",
                                      "Functions return values to the code that called them.",
                                      "A list keeps its items in the order they were added.",
                                      "The river flows past the old mill towards the sea."]},
            "twins": [{"base": "zoo:base-gqa", "tuned": "zoo:gqa-dpo-1", "family": "gqa-dpo"},
                      ["zoo:base-gqa", "zoo:gqa-sft-1"]],
            "experiments": {"delta": {"n_resamples": 100}, "probe": {"n_resamples": 100}}}
    from_dict = plan(study_from_dict(data, base_dir=tmp_path))
    from_file = plan(load_study(_write(tmp_path, ZOO_STUDY)))
    assert [c.key for c in from_dict.cells] == [c.key for c in from_file.cells]


def test_make_tasks_groups_cells_by_model(tmp_path):
    cells = plan(load_study(_write(tmp_path, ZOO_STUDY))).cells
    tasks = make_tasks(cells, workers=1, chunk=100)
    # each group next to one sharing its models, so a 2-model cache loads each model once
    assert [t[0].models for t in tasks] == [("base-gqa",), ("base-gqa", "gqa-dpo-1"),
                                           ("gqa-dpo-1",), ("base-gqa", "gqa-sft-1"),
                                           ("gqa-sft-1",)]
    assert all(len({c.models for c in t}) == 1 for t in make_tasks(cells, workers=2))


BAD = [
    ('name = "x"\nmodles = ["zoo:base-mha"]\n[experiments.si]\n', 2, "unknown key 'modles'"),
    ('models = ["zoo:base-mha"]\n\n[experiments.probe]\nsigma = 0.05\nsigmaa = 0.1\n', 5,
     "unknown option 'sigmaa' for experiment 'probe'"),
    (('[[models]]\npath = "zoo:base-gqa"\n\n[[models]]\npath = "zoo:base-gqa"\n'
      'dtype = "bfloat16"\n[experiments.si]\n'), 4,
     "model 'base-gqa' is listed twice with different settings"),
    ('models = ["zoo:base-mha"]\n[experiments.attribution]\nk = 1\n', 2,
     "experiment 'attribution' does not exist"),
    ('models = ["zoo:base-mha"]\n[experiments.si]\nseeds = [1, 2]\n', 3, "takes no seeds"),
    ('models = ["zoo:base-mha"]\n[experiments.probe]\nn_resamples = 5\n', 3, "n_resamples"),
    ('models = ["zoo:base-mha"]\n[experiments.si]\nprompts = "nope"\n', 3,
     "unknown prompt set 'nope'"),
    ('models = [\n  "zoo:base-mha",\n  "zoo:no-such-model",\n]\n[experiments.si]\n', 3,
     "unknown zoo model"),
]


@pytest.mark.parametrize("text,line,message", BAD, ids=[b[2][:24] for b in BAD])
def test_bad_study_files_name_the_line(tmp_path, text, line, message):
    path = tmp_path / "bad.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(TLSpecError) as err:
        load_study(path)
    assert f"bad.toml, line {line}:" in str(err.value) and message in str(err.value)
    assert study_main(["study", "run", str(path)]) == 2  # the CLI: exit 2, before any run
    assert not (tmp_path / "bad.store").exists()


def test_bad_yaml_names_the_line(tmp_path):
    pytest.importorskip("yaml")
    path = tmp_path / "bad.yaml"
    path.write_text("models:\n  - zoo:base-mha\n  - path: zoo:base-mha\n    backend: hooked\n"
                    "experiments:\n  si: {}\n", encoding="utf-8")
    with pytest.raises(TLSpecError, match=r"bad.yaml, line 3: .*listed twice"):
        load_study(path)


def test_missing_engine_is_a_clear_error(tmp_path):
    study = load_study(_write(tmp_path, ZOO_STUDY))
    if importlib.util.find_spec("ray") is None:
        with pytest.raises(TLSpecError, match="pip install ray"):
            run_study(study, executor="ray")
    with pytest.raises(TLSpecError, match="unknown executor"):
        run_study(study, executor="spark")
    assert not study.store.exists()


# ---------------------------------------------------------------------------- running


def test_local_run_completes_and_is_never_recomputed(zoo_local):
    study, summary = zoo_local
    assert summary.counts["done"] == 15 and not summary.failed
    assert [w["loads"] for w in summary.per_worker.values()] == [3]  # each model loaded once
    store = Store(study.store)
    assert sorted(store.executions(summary.run_id)) == sorted(c.key for c in plan(study).cells)
    again = run_study(study, threads=1)
    assert again.executed == [] and store.executions(again.run_id) == []
    table = collect(study, report=False).table
    assert (table["status"] == "done").all() and table["value"].notna().all()


@pytest.mark.skipif(importlib.util.find_spec("distributed") is None,
                    reason="Dask distributed not installed (pip install tl_spec[dask])")
def test_dask_local_cluster_gives_the_identical_table(zoo_local, tmp_path):
    study, _ = zoo_local
    on_dask = study.with_store(tmp_path / "dask.store")
    summary = run_study(on_dask, executor="dask", workers=2)
    assert summary.counts["done"] == 15 and summary.workers == 2
    workers = {e["worker"] for e in Store(on_dask.store).events(summary.run_id) if "worker" in e}
    assert len(workers) >= 1
    pd.testing.assert_frame_equal(collect(study, report=False).table,
                                  collect(on_dask, report=False).table)


@pytest.mark.parametrize("workers", [1, 2], ids=["one-process", "process-pool"])
def test_killed_run_resumes_with_only_the_missing_cells(tmp_path, workers):
    path = _write(tmp_path, ZOO_STUDY)
    study = load_study(path)
    store = Store(study.store)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "tl_spec.study", "study", "run", str(path), "--quiet",
           "--threads", "1", "--workers", str(workers)]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while len(store.keys()) < 3 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)  # the runner and its pool's workers
    proc.wait()
    time.sleep(0.2)  # killed workers' last writes (atomic renames) have landed
    stored = store.keys()
    all_keys = {c.key for c in plan(study).cells}
    assert 3 <= len(stored) < 15, "the runner finished before it could be killed"
    first_run = {e["run"] for e in store.events()}
    assert len(first_run) == 1
    summary = run_study(study, threads=1)
    assert sorted(store.executions(summary.run_id)) == sorted(all_keys - stored)
    assert store.keys() >= all_keys and not summary.failed


def test_failing_cell_is_retried_recorded_and_collected_as_missing(tmp_path):
    path = _write(tmp_path, 'retries = 1\nprompts = "short"\n'
                  'models = ["zoo:base-mha", { name = "ghost", path = "./no-such-model" }]\n'
                  '{prompts}\n[experiments.si]\n')
    args = _parser().parse_args(["study", "run", str(path), "--retry-delay", "0", "--quiet",
                                 "--threads", "1"])
    assert cli_run(args) == 1  # some cells failed; the others finished
    study = load_study(path)
    store = Store(study.store)
    cells = {c.models[0]: c for c in plan(study).cells}
    assert store.has_result(cells["base-mha"].key)
    failure = store.failure(cells["ghost"].key)
    assert failure["attempts"] == 2 and "no-such-model" in failure["error"]
    assert store.executions().count(cells["ghost"].key) == 2
    table = collect(study, report=False).table.set_index("model")
    assert table.loc["base-mha", "status"] == "done"
    assert table.loc["ghost", "status"] == "missing"
    assert "failed after 2 attempts" in table.loc["ghost", "error"]
    p = plan(study)
    assert p.status[cells["ghost"].key] == "failed" and "no-such-model" in p.table()


def test_changing_an_option_reruns_only_the_cells_it_reaches(tmp_path, capsys):
    text = ('seeds = [1, 2]\nprompts = "short"\nmodels = ["zoo:base-mha"]\n{prompts}\n'
            '[experiments.si]\n\n[experiments.probe]\nn_resamples = 100\nsigma = 0.05\n')
    path = _write(tmp_path, text)
    parser = _parser()
    assert cli_run(parser.parse_args(["study", "run", str(path), "--quiet", "--threads", "1"])) == 0
    before = {c.kind: c.key for c in plan(load_study(path)).cells}
    path.write_text(path.read_text().replace("sigma = 0.05", "sigma = 0.1"))
    study = load_study(path)
    p = plan(study)
    assert {c.kind: p.status[c.key] for c in p.cells} == {"si": "done", "probe": "todo"}
    assert cli_run(parser.parse_args(["study", "plan", str(path)])) == 0
    assert "1 done, 0 failed, 2 to run" in capsys.readouterr().out
    summary = run_study(study, threads=1)
    probe = sorted(c.key for c in p.cells if c.kind == "probe")
    assert sorted(Store(study.store).executions(summary.run_id)) == probe
    assert before["si"] in Store(study.store).keys()  # noqa: SIM118 (a set, not a dict)
    # collect through the CLI: CSV, Parquet, summaries and the report
    out = tmp_path / "out"
    assert cli_run(parser.parse_args(["study", "collect", str(path), "--out", str(out),
                                      "--report-cells", "1"])) == 0
    table = pd.read_csv(out / "study_table.csv")
    assert len(table) == 3 and set(table["status"]) == {"done"}
    if importlib.util.find_spec("pyarrow"):
        pd.testing.assert_frame_equal(pd.read_parquet(out / "study_table.parquet"),
                                      collect(study, report=False).table)
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "table2_probe_by_model" in html and "si_by_model" in html
