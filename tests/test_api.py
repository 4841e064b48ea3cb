"""Public API behaviour: loading, describe, bad input before any work, hooks always removed, bf16."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import tl_spec
from tl_spec import TLSpecError, TLSpecWarning
from tl_spec.cli import main
from tl_spec.hooks.capture import PatternStats, pattern_hook_name
from tl_spec.prompts import STANDARD_10

HAS_HOOKED = True
try:
    from transformer_lens import HookedTransformer  # noqa: F401
except ImportError:
    HAS_HOOKED = False


# ---------------------------------------------------------------- loading and describe


def test_every_arch_loads_on_the_bridge_and_hooked_where_tl_can(tiny_checkpoints):
    loaded = {}
    for arch, path in tiny_checkpoints.items():
        for backend in ("bridge", "hooked"):
            try:
                model = tl_spec.load_model(path, backend=backend)
                loaded[(arch, backend)] = tl_spec.describe(model).backend
            except TLSpecError as err:
                loaded[(arch, backend)] = str(err)
    for arch in tiny_checkpoints:
        assert loaded[(arch, "bridge")] == "bridge"
    if HAS_HOOKED:
        for arch in ("llama-gqa", "llama-mha", "mistral-swa", "qwen2", "gpt2"):
            assert loaded[(arch, "hooked")] == "hooked", loaded[(arch, "hooked")]
        assert "backend='bridge'" in loaded[("gemma2", "hooked")]
    else:
        assert all("transformer-lens<4" in loaded[(a, "hooked")] for a in tiny_checkpoints)


def test_auto_backend_takes_the_bridge_for_local_dirs(tiny_checkpoints):
    assert tl_spec.describe(tl_spec.load_model(tiny_checkpoints["gpt2"])).backend == "bridge"


@pytest.mark.parametrize(
    ("arch", "n_kv", "attention", "rho", "windows"),
    [
        ("llama-gqa", 2, "GQA", 4.0, (None,) * 3),  # ratio 4 x 8 heads / d_head 8
        ("llama-mha", 8, "MHA", 1.0, (None,) * 3),
        ("mistral-swa", 2, "GQA", 4.0, (8,) * 3),
        ("qwen2", 4, "GQA", 2.0, (None,) * 3),
        ("gemma2", 4, "GQA", 1.0, (8, None, 8, None)),  # ratio 2 x 8 / d_head 16
        ("gpt2", 8, "MHA", 1.0, (None,) * 3),
    ],
)
def test_describe(tl_model, arch, n_kv, attention, rho, windows):
    facts = tl_spec.describe(tl_model(arch, "bridge"), seq_len=16)
    assert (facts.n_kv_heads, facts.attention, facts.rho_eff, facts.windows) == (
        n_kv, attention, rho, windows)
    assert facts.kv_ratio == facts.n_heads / n_kv
    assert facts.window_binds is any(w is not None for w in windows)
    assert tl_spec.describe(tl_model(arch, "bridge"), seq_len=8).window_binds is False
    assert tl_spec.describe(tl_model(arch, "bridge")).window_binds is None


@pytest.mark.skipif(not HAS_HOOKED, reason="HookedTransformer needs TransformerLens 3.x")
def test_describe_agrees_across_backends(tl_model):
    for arch in ("llama-gqa", "mistral-swa", "gpt2"):
        a = tl_spec.describe(tl_model(arch, "bridge"), seq_len=32).to_dict()
        b = tl_spec.describe(tl_model(arch, "hooked"), seq_len=32).to_dict()
        for key in ("backend", "model"):
            a.pop(key), b.pop(key)
        assert a == b


def test_load_model_bad_input(tmp_path):
    with pytest.raises(TLSpecError, match="no config.json"):
        tl_spec.load_model(tmp_path)
    with pytest.raises(TLSpecError, match="neither an existing directory"):
        tl_spec.load_model(tmp_path / "missing" / "model")
    with pytest.raises(TLSpecError, match="unknown backend"):
        tl_spec.load_model(tmp_path, backend="jax")
    with pytest.raises(TLSpecError, match="unknown dtype"):
        tl_spec.load_model(tmp_path, dtype="float8")


def test_dtype_names(tiny_checkpoints):
    model = tl_spec.load_model(tiny_checkpoints["llama-mha"], dtype="bf16")
    assert next(model.parameters()).dtype == torch.bfloat16


# ---------------------------------------------------------------- bad input, before any work


class _Counter:
    def __init__(self):
        self.calls = 0

    def __call__(self, tensor, hook):
        self.calls += 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"prompts": []}, "prompt list is empty"),
        ({"prompts": "one string"}, "single string"),
        ({"prompts": ["ok prompt", ""]}, "prompt 1"),
        ({"method": "attention_rollout"}, "unknown method"),
        ({"region": "upper"}, "unknown region"),
        ({"aggregate": "median"}, "unknown aggregate"),
        ({"method": "entropy_profile", "aggregate": "mean_pattern"}, "method='pattern' only"),
        ({"max_length": 1}, "max_length must be an integer >= 2"),
        ({"batch_size": 0}, "batch_size"),
        ({"padding_side": "middle"}, "padding_side"),
    ],
)
def test_bad_input_raises_before_any_forward(tl_model, kwargs, message):
    model = tl_model("llama-gqa", "bridge")
    counter = _Counter()
    call = {"prompts": list(STANDARD_10), **kwargs}
    with model.hooks(fwd_hooks=[(pattern_hook_name(0), counter)]):
        with pytest.raises(TLSpecError, match=message):
            tl_spec.specialization_index(model, call.pop("prompts"), **call)
    assert counter.calls == 0


def test_short_prompt_rejected_before_any_forward(tl_model):
    model = tl_model("qwen2", "bridge")  # TransformerLens default for Qwen2: no BOS
    assert model.cfg.default_prepend_bos is False
    one_token = model.tokenizer.convert_ids_to_tokens(300)  # a single vocabulary entry
    counter = _Counter()
    with model.hooks(fwd_hooks=[(pattern_hook_name(0), counter)]):
        with pytest.raises(TLSpecError, match="prompt 10 .* at least 2"):
            tl_spec.specialization_index(model, [*STANDARD_10, one_token])
    assert counter.calls == 0
    # with BOS prepended the same prompt has two tokens and is accepted
    tl_spec.specialization_index(model, [one_token, "two words"], prepend_bos=True)


def test_model_without_pattern_hooks():
    with pytest.raises(TLSpecError, match="not a TransformerLens model"):
        tl_spec.specialization_index(torch.nn.Linear(2, 2), ["a prompt"])


def test_look_alike_without_pattern_hooks_is_named(tl_model):
    real = tl_model("gpt2", "bridge")

    class NoPatterns:  # a TransformerLens look-alike whose attention exposes no pattern hook
        cfg = real.cfg
        tokenizer = real.tokenizer
        hook_dict = {k: v for k, v in real.hook_dict.items() if "hook_pattern" not in k}
        run_with_hooks = hooks = to_tokens = real.to_tokens

    with pytest.raises(TLSpecError, match="no attention-pattern hook blocks.0.attn.hook_pattern"):
        tl_spec.specialization_index(NoPatterns(), ["a prompt"])


# ---------------------------------------------------------------- hooks are always removed


def _hook_count(model) -> int:
    """Hooks attached anywhere (the bridge lists some hook points under two names)."""
    unique = {id(hp): hp for hp in model.hook_dict.values()}
    return sum(len(hp.fwd_hooks) for hp in unique.values())


@pytest.mark.parametrize("backend", ["bridge", "hooked"])
def test_hooks_removed_when_forward_raises(tl_model, backend):
    model = tl_model("llama-gqa", backend)
    before = _hook_count(model)

    def boom(tensor, hook):
        raise RuntimeError("forward failed on purpose")

    model.add_hook("blocks.1.hook_resid_pre", boom)
    try:
        with pytest.raises(RuntimeError, match="on purpose"):
            tl_spec.specialization_index(model, list(STANDARD_10[:3]))
        assert _hook_count(model) == before + 1  # only the user's own hook remains
    finally:
        model.reset_hooks()
    assert _hook_count(model) == before
    assert tl_spec.specialization_index(model, list(STANDARD_10[:2])).value > 0


# ---------------------------------------------------------------- capture hooks in user code


def test_pattern_stats_in_users_own_run_with_hooks(tl_model):
    model = tl_model("mistral-swa", "bridge")
    prompt = STANDARD_10[5]
    stats = PatternStats(model, stats=("correlation", "row_entropy", "column_entropy"))
    model.run_with_hooks(model.to_tokens(prompt), return_type=None, fwd_hooks=stats.fwd_hooks)
    got = stats.collect()
    assert got["correlation"].shape == (1, 3, 8, 8)
    assert got["row_entropy"].shape == got["column_entropy"].shape == (1, 3, 8)
    si = tl_spec.specialization_index(model, [prompt])
    np.testing.assert_allclose(1 - si.per_prompt_heads, 1 - got["correlation"].sum(-1) / 7 + 1 / 7,
                               atol=1e-12)


def test_pattern_stats_rejects_bad_options(tl_model):
    model = tl_model("gpt2", "bridge")
    with pytest.raises(TLSpecError, match="unknown statistic"):
        PatternStats(model, stats=("kurtosis",))
    with pytest.raises(TLSpecError, match="float32 or float64"):
        PatternStats(model, dtype=torch.float16)
    with pytest.raises(TLSpecError, match="out of range"):
        PatternStats(model, layers=[3])
    stats = PatternStats(model)
    with pytest.raises(TLSpecError, match="no forward pass"):
        stats.collect()
    stats.attention_mask = torch.ones(2, 3)
    with pytest.raises(TLSpecError, match="attention_mask has shape"):
        model.run_with_hooks(model.to_tokens("four tokens here"), return_type=None,
                             fwd_hooks=stats.fwd_hooks)
    assert _hook_count(model) == 0


# ---------------------------------------------------------------- tokenization, truncation, dtype


def test_truncation_is_counted_and_warned(tl_model):
    model = tl_model("llama-gqa", "bridge")
    with pytest.warns(TLSpecWarning, match="10 of 10 prompts were longer than max_length=8"):
        si = tl_spec.specialization_index(model, list(STANDARD_10), max_length=8)
    assert si.settings["n_truncated"] == 10
    assert all(len(t) == 8 for t in si.tokens)


def test_bos_follows_model_default_unless_given(tl_model):
    model = tl_model("llama-gqa", "bridge")
    bos = model.tokenizer.bos_token_id
    default = tl_spec.specialization_index(model, ["The cat sat on the mat"])
    no_bos = tl_spec.specialization_index(model, ["The cat sat on the mat"], prepend_bos=False)
    assert default.tokens[0][0] == bos and no_bos.tokens[0][0] != bos
    assert len(default.tokens[0]) == len(no_bos.tokens[0]) + 1
    assert default.settings["prepend_bos"] is True and no_bos.settings["prepend_bos"] is False


def test_bfloat16_model_statistics_in_float64(tiny_checkpoints):
    fp32 = tl_spec.load_model(tiny_checkpoints["llama-gqa"], dtype="float32")
    bf16 = tl_spec.load_model(tiny_checkpoints["llama-gqa"], dtype="bfloat16")
    a = tl_spec.specialization_index(fp32, list(STANDARD_10))
    b = tl_spec.specialization_index(bf16, list(STANDARD_10))
    assert b.per_prompt.dtype == np.float64
    assert b.provenance["dtype"] == "torch.bfloat16"
    # bf16 rounding of the forward moves SI, but only a little (|diff| seen here: ~1e-3)
    assert abs(a.value - b.value) < 2e-2
    assert not np.isnan(b.per_head).any()


def test_result_json_round_trip(tl_model, tmp_path):
    si = tl_spec.specialization_index(tl_model("gpt2", "bridge"), list(STANDARD_10[:4]))
    path = si.to_json(tmp_path / "si.json") and tmp_path / "si.json"
    record = json.loads(path.read_text())
    assert record["schema_version"] == 1 and record["kind"] == "specialization_index"
    assert record["value"] == pytest.approx(si.value, abs=0)
    assert np.allclose(record["per_layer"], si.per_layer)
    prov = record["provenance"]
    assert prov["backend"] == "bridge" and prov["prompts"]["n_prompts"] == 4
    assert set(prov["versions"]) >= {"tl_spec", "transformer-lens", "torch"}
    assert prov["options"]["method"] == "pattern" and prov["options"]["max_length"] == 128
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


def test_standard10_provenance_names_the_protocol_set(tl_model):
    si = tl_spec.specialization_index(tl_model("gpt2", "bridge"), STANDARD_10)
    assert si.provenance["prompts"]["name"] == "standard10_v3"
    assert si.provenance["prompts"]["md5"] == "715065bab181f46bf12ed471951141e2"


# ---------------------------------------------------------------- CLI


def test_cli_si_and_describe(tiny_checkpoints, tmp_path, capsys):
    path = str(tiny_checkpoints["mistral-swa"])
    out = tmp_path / "si.json"
    assert main(["si", path, "--method", "entropy_profile", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "SI = " in printed and "standard10_v3" in printed
    record = json.loads(out.read_text())
    assert record["method"] == "entropy_profile" and len(record["entropies"]) == 3
    assert main(["describe", path, "--seq-len", "128", "--json", "-"]) == 0
    facts = json.loads(capsys.readouterr().out)
    assert facts["windows"] == [8, 8, 8] and facts["window_binds"] is True


def test_cli_bad_input_writes_nothing(tiny_checkpoints, tmp_path, capsys):
    path = str(tiny_checkpoints["gpt2"])
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("1. First prompt here\n2. Second prompt here\n")
    out = tmp_path / "si.json"
    rc = main(["si", path, "--prompts", str(prompts), "--prompts-md5", "0" * 32,
               "--json", str(out)])
    assert rc == 2 and not out.exists()
    assert "md5" in capsys.readouterr().err.lower()
    assert main(["si", path, "--max-length", "1", "--json", str(out)]) == 2
    assert "max_length" in capsys.readouterr().err and not out.exists()
    assert main(["si", str(tmp_path / "nowhere" / "x"), "--json", str(out)]) == 2
    assert not out.exists()


def test_cli_own_prompt_file(tiny_checkpoints, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("The first prompt is here\nAnother prompt follows\n")
    assert main(["si", str(tiny_checkpoints["gpt2"]), "--prompts", str(prompts),
                 "--json", "-"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["provenance"]["prompts"]["name"] == "prompts"  # one record of the prompts
    assert len(record["tokens"]) == 2


def test_no_warnings_on_a_clean_run(tl_model):
    with warnings.catch_warnings():
        warnings.simplefilter("error", TLSpecWarning)
        tl_spec.specialization_index(tl_model("llama-mha", "bridge"), STANDARD_10)


def test_tiny_cli_writes_a_loadable_checkpoint(tmp_path):
    assert main(["tiny", str(tmp_path / "m"), "--arch", "qwen2"]) == 0
    assert Path(tmp_path / "m" / "config.json").exists()


@pytest.mark.parametrize("method", ["pattern", "entropy_profile", "normalized_entropy"])
def test_load_result_round_trips_si(tl_model, tmp_path, method):
    si = tl_spec.specialization_index(tl_model("llama-gqa", "bridge"), STANDARD_10, method=method)
    path = tmp_path / "si.json"
    si.to_json(path)
    back = tl_spec.load_result(path)
    assert type(back) is type(si) and back.value == si.value and back.method == method
    for name in ("per_layer", "per_head", "head_correlation", "within_group", "entropies",
                 "per_prompt", "per_prompt_heads"):
        a, b = getattr(si, name), getattr(back, name)
        assert (a is None) == (b is None), name
        if a is not None:
            np.testing.assert_array_equal(a, b, err_msg=name)
    assert back.tokens == si.tokens and back.settings == si.settings
    assert len(back.to_frame()) == 3 * 8


def test_load_result_errors_name_file_and_field(tl_model, tmp_path):
    si = tl_spec.specialization_index(tl_model("gpt2", "bridge"), STANDARD_10[:3])
    text = si.to_json()
    (tmp_path / "trunc.json").write_text(text[: len(text) // 2])
    with pytest.raises(TLSpecError, match=r"trunc.json: not valid JSON at line \d+"):
        tl_spec.load_result(tmp_path / "trunc.json")
    record = json.loads(text)
    record["per_head"][1][2] = "0.5"
    (tmp_path / "edited.json").write_text(json.dumps(record))
    with pytest.raises(TLSpecError, match=r"edited.json: field 'per_head\[1\]\[2\]' is invalid"):
        tl_spec.load_result(tmp_path / "edited.json")
    record = json.loads(text)
    record["schema_version"] = 2
    (tmp_path / "future.json").write_text(json.dumps(record))
    with pytest.raises(TLSpecError, match="future.json: written with result schema version 2"):
        tl_spec.load_result(tmp_path / "future.json")
    with pytest.raises(TLSpecError, match="no such result file"):
        tl_spec.load_result(tmp_path / "missing.json")
