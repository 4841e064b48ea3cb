"""Reliability of measurement and model loading (issue 16): non-finite forward passes, broken
checkpoints, prompts longer than the model's context, hub names offline, non-float dtypes.

Every model here is a real tiny TransformerLens model, loaded fresh where a test damages it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch

import tl_spec
import tl_spec.models
from conftest import LOADABLE
from tl_spec import TLSpecError
from tl_spec.errors import TLSpecWarning
from tl_spec.prompts import STANDARD_10
from tl_spec.tokens import prepare_inputs

REPO = Path(__file__).resolve().parents[1]


def _set_nan(model, backend: str, hooked_param: str, bridge_pattern: str) -> str:
    """Put one NaN into layer 1's parameter (hooked: attribute path; bridge: name regex)."""
    with torch.no_grad():
        if backend == "hooked":
            obj = model.blocks[1]
            for part in hooked_param.split("."):
                obj = getattr(obj, part)
            obj.view(-1)[0] = float("nan")
            return hooked_param
        for name, param in model.named_parameters():
            if re.search(bridge_pattern, name):
                param.data.reshape(-1)[0] = float("nan")
                return name
    raise AssertionError(f"no parameter matches {bridge_pattern}")


# ---------------------------------------------------------------- item 1: NaN/Inf, any backend


@pytest.mark.parametrize("backend", LOADABLE)
def test_nan_query_weight_raises_naming_the_layer(tiny_checkpoints, backend):
    model = tl_spec.load_model(tiny_checkpoints["llama-gqa"], backend=backend)
    before = tl_spec.specialization_index(model, list(STANDARD_10[:3])).value
    assert 0 < before < 1
    _set_nan(model, backend, "attn.W_Q", r"layers\.1\..*q_proj.*weight")
    with pytest.raises(TLSpecError) as err:
        tl_spec.specialization_index(model, list(STANDARD_10[:3]))
    msg = str(err.value)
    assert "non-finite values" in msg and "starting at layer 1" in msg
    assert "weights hold non-finite values" in msg and ("W_Q" in msg or "q_proj" in msg)
    assert "regression" not in msg and "resample" not in msg


@pytest.mark.parametrize("backend", LOADABLE)
def test_nan_mlp_weight_caught_in_the_residual_stream(tiny_checkpoints, backend):
    model = tl_spec.load_model(tiny_checkpoints["llama-gqa"], backend=backend)
    _set_nan(model, backend, "mlp.W_in", r"layers\.1\..*up_proj.*weight")
    with pytest.raises(TLSpecError, match=r"starting at layer 1: .*residual stream"):
        tl_spec.specialization_index(model, list(STANDARD_10[:2]))


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")])
def test_residual_check_is_exact(tl_model, value):
    """The residual check flags NaN/+-Inf on real tokens only; the largest finite values pass
    (the check sums x * 0, which cannot overflow)."""
    from tl_spec.hooks.capture import PatternStats

    model = tl_model("llama-gqa", "bridge")
    mask = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]])

    def run(resid):
        stats = PatternStats(model, stats=("column_entropy",))
        stats.attention_mask = mask
        for name, fn in stats.fwd_hooks:
            if name == "blocks.0.hook_resid_post":
                fn(resid)
        return stats

    resid = torch.full((2, 4, int(model.cfg.d_model)), torch.finfo(torch.float32).max)
    run(resid).check_finite()  # finite, however large
    resid[0, 0, 5] = value  # a pad position: not measured
    run(resid).check_finite()
    resid[1, 2, 7] = value
    with pytest.raises(TLSpecError, match=r"starting at layer 0: .*residual stream"):
        run(resid).check_finite()


# ---------------------------------------------------------------- item 4: broken checkpoints


def _damage(src: Path, dst: Path, how: str) -> Path:
    shutil.copytree(src, dst)
    if how == "config not json":
        (dst / "config.json").write_text("{not json")
    elif how == "no model_type":
        config = json.loads((dst / "config.json").read_text())
        del config["model_type"]
        (dst / "config.json").write_text(json.dumps(config))
    elif how == "truncated weights":
        weights = dst / "model.safetensors"
        os.truncate(weights, weights.stat().st_size // 2)
    elif how == "no weights":
        (dst / "model.safetensors").unlink()
    elif how == "missing shard":
        (dst / "model.safetensors").rename(dst / "model-00001-of-00002.safetensors")
        index = {"metadata": {}, "weight_map": {"a": "model-00001-of-00002.safetensors",
                                                "b": "model-00002-of-00002.safetensors"}}
        (dst / "model.safetensors.index.json").write_text(json.dumps(index))
    return dst


BROKEN = {
    "config not json": r"config\.json is not valid JSON",
    "no model_type": r"config\.json has no \"model_type\" entry",
    "truncated weights": r"model\.safetensors has \d+ bytes but its header describes \d+: it is "
                         r"truncated",
    "no weights": r"holds no weights \(none of model\.safetensors",
    "missing shard": r"lacks 1 weight shard\(s\) its index lists "
                     r"\(model-00002-of-00002\.safetensors\)",
}


@pytest.mark.parametrize("backend", LOADABLE)
@pytest.mark.parametrize("how", list(BROKEN))
def test_broken_checkpoint_is_a_clear_error(tiny_checkpoints, tmp_path, how, backend):
    path = _damage(tiny_checkpoints["gpt2"], tmp_path / "ckpt", how)
    with pytest.raises(TLSpecError, match=BROKEN[how]) as err:
        tl_spec.load_model(path, backend=backend)
    assert str(path) in str(err.value) and "save_pretrained" in str(err.value)


@pytest.mark.parametrize("backend", LOADABLE)
@pytest.mark.parametrize("arch", ["gpt2", "llama-gqa"])
def test_checkpoint_without_tokenizer_takes_token_ids(tiny_checkpoints, tl_model, tmp_path,
                                                      arch, backend):
    src = tiny_checkpoints[arch]
    path = tmp_path / "no_tok"
    shutil.copytree(src, path, ignore=shutil.ignore_patterns(
        "tokenizer*", "vocab*", "merges.txt", "special_tokens_map.json"))
    with pytest.warns(TLSpecWarning, match="no tokenizer files.*token ids only"):
        model = tl_spec.load_model(path, backend=backend)
    assert model.tokenizer is None
    ids = torch.randint(3, 300, (3, 12), generator=torch.Generator().manual_seed(0))
    got = tl_spec.specialization_index(model, ids).value
    want = tl_spec.specialization_index(tl_model(arch, backend), ids).value
    assert got == pytest.approx(want, abs=1e-6)
    with pytest.raises(TLSpecError, match="no tokenizer"):
        tl_spec.specialization_index(model, ["a text prompt"])


# ---------------------------------------------------------------- item 6: context length


@pytest.fixture(scope="module")
def short_gpt2(tmp_path_factory):
    from tl_spec.zoo.tiny import build_random_checkpoint

    return build_random_checkpoint(tmp_path_factory.mktemp("short") / "gpt2", arch="gpt2",
                                   n_positions=16)


@pytest.mark.parametrize("backend", LOADABLE)
def test_max_length_capped_at_the_context(short_gpt2, backend):
    model = tl_spec.load_model(short_gpt2, backend=backend)
    assert int(model.cfg.n_ctx) == 16
    ids = torch.randint(3, 300, (2, 40), generator=torch.Generator().manual_seed(1))
    with pytest.warns(TLSpecWarning, match=r"2 of 2 prompts .* context of 16 tokens"):
        inputs = prepare_inputs(model, ids, max_length=128)
    assert inputs.tokenized.lengths == (16, 16) and inputs.tokenized.n_truncated == 2
    text = [" ".join(["word"] * 60), "short prompt here"]
    with pytest.warns(TLSpecWarning, match=r"1 of 2 prompts .* context of 16 tokens"):
        si = tl_spec.specialization_index(model, text, max_length=128)
    assert 0 < si.value < 1
    with pytest.warns(TLSpecWarning, match="context of 16"):
        assert 0 < tl_spec.specialization_index(model, ids, max_length=128).value < 1
    with warnings.catch_warnings():  # max_length under the context: the old rule, no cap message
        warnings.simplefilter("error")
        assert prepare_inputs(model, ids[:, :10], max_length=128).tokenized.lengths == (10, 10)
    with pytest.warns(TLSpecWarning, match="longer than max_length=8"):
        assert prepare_inputs(model, ids, max_length=8).tokenized.lengths == (8, 8)


# ---------------------------------------------------------------- dtype


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64, torch.bool, torch.complex64])
def test_non_float_dtypes_refused_before_loading(tmp_path, dtype):
    with pytest.raises(TLSpecError, match="is not a floating-point type"):
        tl_spec.load_model(tmp_path / "does-not-matter", dtype=dtype)
    assert tl_spec.models.resolve_dtype(torch.float16) is torch.float16


# ---------------------------------------------------------------- item 13: hub names offline


def test_unreachable_hub_fails_fast_with_the_three_options(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    monkeypatch.setattr(tl_spec.checkpoints, "hub_reachable", lambda timeout=3.0: False)
    with pytest.raises(TLSpecError) as err:
        tl_spec.load_model("some-org/some-model", backend="bridge")
    msg = str(err.value)
    assert "cannot be reached" in msg
    assert "local checkpoint directory" in msg and "tl-spec zoo list" in msg
    assert "hub name that is reachable" in msg


_HUB_SCRIPT = textwrap.dedent("""
    import json, sys, warnings
    warnings.simplefilter("ignore")
    import tl_spec, tl_spec.models
    if sys.argv[1] == "no-network":  # HF_HUB_OFFLINE unset, the probe finds no hub
        tl_spec.checkpoints.hub_reachable = lambda timeout=3.0: False
    out = {}
    prompts = ["The cat sat on the mat today", "A second prompt for the test"]
    local = tl_spec.load_model(sys.argv[2], backend="bridge")
    out["local"] = tl_spec.specialization_index(local, prompts).value
    for backend in sys.argv[3:]:
        model = tl_spec.load_model("gpt2", backend=backend)
        out[backend] = [tl_spec.models.backend_name(model), int(model.cfg.n_layers),
                        tl_spec.specialization_index(model, prompts).value]
    import os, tempfile
    from tl_spec.cli import main
    target = os.path.join(tempfile.mkdtemp(), "si.json")  # `tl-spec si gpt2`, auto backend
    status = main(["si", "gpt2", "--quiet", "--max-length", "32", "--json", target])
    out["cli"] = [status, json.load(open(target))["value"] if status == 0 else None,
                  tl_spec.specialization_index(local, tl_spec.prompts.STANDARD_10,
                                               max_length=32).value]
    try:
        tl_spec.load_model("not-in-the-cache/model", backend="bridge")
    except tl_spec.TLSpecError as err:
        out["missing"] = str(err)
    print("RESULT " + json.dumps(out))
""")


@pytest.mark.parametrize("mode", ["HF_HUB_OFFLINE=1", "no-network"])
def test_hub_name_loads_offline_from_a_cache(tiny_checkpoints, tmp_path, mode):
    """``load_model("gpt2")`` from a cache the test builds, offline, every backend.

    ``HF_HUB_OFFLINE=1``: the user said so. ``no-network``: the variable is unset and the one
    reachability probe fails, so the cache is read without the hub client's retries.
    """
    home = tmp_path / "hf"
    repo = home / "hub" / "models--gpt2"
    revision = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(tiny_checkpoints["gpt2"], repo / "snapshots" / revision)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    env = dict(os.environ, HF_HOME=str(home), HF_HUB_CACHE=str(home / "hub"), PYTHONPATH=str(REPO))
    for var in ("TRANSFORMERS_CACHE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        env.pop(var, None)
    if mode == "HF_HUB_OFFLINE=1":
        env["HF_HUB_OFFLINE"] = "1"
    backends = ["auto", *LOADABLE]
    proc = subprocess.run([sys.executable, "-c", _HUB_SCRIPT, mode, str(tiny_checkpoints["gpt2"]),
                           *backends], env=env, cwd=REPO, capture_output=True, text=True,
                          timeout=600)
    lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    out = json.loads(lines[-1].removeprefix("RESULT "))
    auto = "hooked" if "hooked" in LOADABLE else "bridge"  # TransformerLens 3 picks hooked
    assert out["auto"][:2] == [auto, 3]
    for backend in backends:
        assert out[backend][2] == pytest.approx(out["local"], abs=1e-5), backend
    assert out["cli"][0] == 0 and out["cli"][1] == pytest.approx(out["cli"][2], abs=1e-5)
    reason = "HF_HUB_OFFLINE is set" if mode == "HF_HUB_OFFLINE=1" else "cannot be reached"
    assert reason in out["missing"] and "tl-spec zoo list" in out["missing"]


# ---------------------------------------------------------------- Falcon, grouped KV on the bridge


def test_falcon_grouped_kv_on_the_bridge_is_a_clear_error(tmp_path):
    import transformers

    from tl_spec.zoo.tiny import build_tokenizer

    tokenizer = build_tokenizer(384)
    config = transformers.FalconConfig(
        vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2, num_attention_heads=8,
        num_kv_heads=2, new_decoder_architecture=True, bias=False, alibi=False)
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    with pytest.raises(TLSpecError, match=r"cannot split the fused attention weights .* grouped "
                                          r"key/value heads .* backend='hooked'"):
        tl_spec.load_model(tmp_path, backend="bridge")
