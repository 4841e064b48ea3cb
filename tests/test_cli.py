"""The ``tl-spec`` command as a researcher meets it: zoo names everywhere, bad input refused early.

Every refusal is exit status 2 with a one-line ``tl-spec CMD: error: ...`` (no traceback), raised
before a model is loaded: the tests give a model name that does not exist, so an error about the
option proves the option was checked first.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

import tl_spec
from tl_spec.cli import main

MISSING = "no-such-model-xyz"


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def _refused(capsys, *argv: str, needles: tuple[str, ...]) -> str:
    status, _, err = _run(capsys, *argv)
    assert status == 2, err
    assert "Traceback" not in err
    assert f"tl-spec {argv[0]}: error:" in err
    for needle in needles:
        assert needle in err, (needle, err)
    return err


# --- a light parser ------------------------------------------------------------------------------


def test_parser_imports_no_heavy_module():
    code = ("import sys, tl_spec.cli, tl_spec.options; tl_spec.cli.build_parser(); "
            "print(sorted({m.split('.')[0] for m in sys.modules} & "
            "{'torch', 'transformer_lens', 'numpy', 'scipy', 'transformers'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, cwd=Path(__file__).parents[1], check=True).stdout
    assert out.strip() == "[]"


def test_lazy_subcommands_still_have_their_flags(capsys):
    status, out, _ = _run(capsys, "audit", "--help")
    assert status == 0 and "--paper-table" in out
    status, out, _ = _run(capsys, "tiny", "--help")
    assert status == 0 and "--arch" in out and "qwen2" in out
    status, out, _ = _run(capsys, "--help")
    assert status == 0
    for command in ("si", "delta", "study", "audit", "report", "tiny", "describe", "zoo"):
        assert command in out


def test_package_names_resolve_lazily():
    assert set(tl_spec.__all__) <= set(dir(tl_spec))
    for name in tl_spec.__all__:
        assert getattr(tl_spec, name) is not None
    from tl_spec import SIOptions, load_model, viz  # noqa: F401

    assert SIOptions().method == "pattern"
    with pytest.raises(AttributeError):
        tl_spec.no_such_name  # noqa: B018


# --- zoo names everywhere ------------------------------------------------------------------------


def test_si_and_describe_take_zoo_names(capsys, tmp_path):
    out_json = tmp_path / "new" / "si.json"
    status, out, err = _run(capsys, "si", "base-gqa", "--max-length", "32", "--quiet",
                            "--json", str(out_json))
    assert status == 0, err
    assert "\r" not in err  # no progress bar when stderr is not a terminal
    value = json.loads(out_json.read_text())["value"]
    assert 0.0 < value < 1.0
    status, out, err = _run(capsys, "describe", "zoo:base-swa")
    assert status == 0, err
    assert "rho_eff" in out


def test_delta_probe_take_zoo_names(capsys):
    status, out, err = _run(capsys, "delta", "base-gqa", "zoo:gqa-dpo-1", "--max-length", "32",
                            "--n-resamples", "200")
    assert status == 0, err
    assert "base: base-gqa" in out and "layers whose change survives Holm" in out
    status, out, err = _run(capsys, "probe", "base-gqa", "--max-length", "32", "--seeds", "1,2")
    assert status == 0, err
    assert "model: base-gqa" in out


def test_sensitivity_and_stability_take_zoo_names(capsys, tmp_path):
    path = tmp_path / "cmp.json"
    status, out, err = _run(capsys, "sensitivity", "base-mha", "base-gqa", "--max-length", "32",
                            "--sigmas", "0,0.1,0.2", "--seeds", "1,2", "--json", str(path))
    assert status == 0, err
    ratio = json.loads(path.read_text())["ratio_of_means"]
    assert math.isfinite(ratio) and ratio > 0
    status, out, err = _run(capsys, "stability", "base-gqa", "zoo:gqa-sft-1", "--max-length", "32",
                            "--n-resamples", "100", "--null", "0", "--n-blocks", "4")
    assert status == 0, err
    assert "base-gqa, zoo:gqa-sft-1" in out


def test_unknown_model_names_all_three_options(capsys):
    err = _refused(capsys, "si", MISSING,
                   needles=("not a local directory", "not a zoo model", "hub", "zoo list"))
    assert MISSING in err
    _refused(capsys, "delta", "base-gqa", "zoo:nope", needles=("no zoo model 'nope'",))


def test_unknown_model_without_offline_flag_fails_fast():
    """No HF_HUB_OFFLINE: the hub check has a deadline (the subprocess timeout guards a hang)."""
    env = {k: v for k, v in __import__("os").environ.items()
           if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    done = subprocess.run([sys.executable, "-m", "tl_spec.cli", "describe", MISSING],
                          capture_output=True, text=True, timeout=120, env=env,
                          cwd=Path(__file__).parents[1])
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and "not a zoo model" in done.stderr


# --- output paths, files and flags checked before loading (issue 16 items 5, 7, 8, 9, 10) --------


def test_output_paths_are_checked_first(capsys, tmp_path):
    _refused(capsys, "si", MISSING, "--json", str(tmp_path), needles=("is a directory",))
    blocker = tmp_path / "file"
    blocker.write_text("x")
    _refused(capsys, "delta", MISSING, MISSING, "--json", str(blocker / "sub" / "d.json"),
             needles=("is a file",))


def test_bad_device_and_text_files(capsys, tmp_path):
    _refused(capsys, "si", "base-gqa", "--device", "bogus", needles=("--device 'bogus'",))
    latin = tmp_path / "latin1.txt"
    latin.write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    _refused(capsys, "sensitivity", MISSING, "--texts", str(latin), needles=("not UTF-8",))
    _refused(capsys, "si", MISSING, "--prompts", str(latin), needles=("not UTF-8",))
    _refused(capsys, "deconstruct", MISSING, "--texts", str(latin), needles=("not UTF-8",))
    empty = tmp_path / "empty.txt"
    empty.write_text("\n# only a comment\n")
    err = _refused(capsys, "si", MISSING, "--prompts", str(empty), needles=("no text",))
    assert "hash" not in err


def test_study_run_flags_and_name(capsys, tmp_path):
    _refused(capsys, "study", "run", str(tmp_path / "s.toml"), "--threads", "-2",
             needles=("--threads must be at least 1",))
    study = tmp_path / "s.toml"
    study.write_text('name = "a\\u0000b"\nmodels = ["zoo:base-gqa"]\n'
                     '[experiments.si]\nkind = "si"\n')
    _refused(capsys, "study", "plan", str(study), needles=("printable",))


def test_tiny_refuses_an_existing_file(capsys, tmp_path):
    target = tmp_path / "taken"
    target.write_text("keep me")
    _refused(capsys, "tiny", str(target), needles=("is a file",))
    assert target.read_text() == "keep me"


def test_report_refuses_undrawable_and_deep_json(capsys, tmp_path):
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 50_000 + "]" * 50_000)
    _refused(capsys, "report", str(deep), "--out", str(tmp_path / "r1"), needles=("nested",))
    huge = tmp_path / "huge.json"
    huge.write_text(json.dumps({"schema_version": 1, "kind": "specialization_index",
                                "per_head": [[1e300] * 4] * 4}))
    _refused(capsys, "report", str(huge), "--out", str(tmp_path / "r2"),
             needles=("1e+300", "per_head"))
    assert not (tmp_path / "r1").exists() and not (tmp_path / "r2").exists()


def test_silently_accepted_inputs_are_refused(capsys, tmp_path):
    err = _refused(capsys, "zoo", "build", "default", "--only", "typo",
                   "--out", str(tmp_path / "zoo"), needles=("'typo'", "base-gqa"))
    assert not (tmp_path / "zoo").exists()
    _refused(capsys, "describe", "base-gqa", "--seq-len", "-5", needles=("--seq-len",))
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"hello": [1, 2, 3]}))
    status, _, err = _run(capsys, "audit", str(other))
    assert status == 1 and "nothing auditable" in err


def test_option_errors_come_before_loading(capsys):
    _refused(capsys, "probe", MISSING, "--max-length", "1", needles=("max_length",))
    _refused(capsys, "sensitivity", MISSING, "--sigmas", "0,0.1", needles=("3 distinct sigmas",))
    _refused(capsys, "deconstruct", MISSING, "--placements", "hybrid:0", needles=("hybrid:k",))
    _refused(capsys, "delta", "base-gqa", "nodir", needles=("'nodir'", "not a zoo model"))


def test_option_messages_name_the_right_flag(capsys):
    status, _, err = _run(capsys, "probe", MISSING, "--sweep", "--regions", "bogus")
    last = err.strip().splitlines()[-1]  # argparse prints the usage, then the error
    assert status == 2 and "--regions" in last and "--layers" not in last
    status, _, err = _run(capsys, "sensitivity", MISSING, "--sigmas=")
    last = err.strip().splitlines()[-1]
    assert status == 2 and "nan" not in last and "--sigmas" in last


# --- the demo's settings and summary (issue 15 items 4, 6) ---------------------------------------


def test_demo_uses_the_sensitivity_defaults_and_says_otherwise():
    from tl_spec import demo
    from tl_spec.options import SensitivityOptions

    assert demo.SENSITIVITY == SensitivityOptions()
    assert demo._differences(demo.SENSITIVITY) == []
    changed = demo._differences(SensitivityOptions(sigmas=(0, 0.1, 0.2)))
    assert len(changed) == 1 and changed[0].startswith("sigmas=(0.0, 0.1, 0.2)")


def test_demo_table_has_no_trailing_spaces():
    from tl_spec.demo import _table

    text = _table([("model", "measurement", "value"), ("", "layers", ""), ("a", "", "1")])
    assert all(line == line.rstrip() for line in text.splitlines())
    assert text.splitlines()[2] == "a" + " " * 19 + "1"
