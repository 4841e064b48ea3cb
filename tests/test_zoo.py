"""The embedded zoo: corpus, shipped models, deterministic and resumable builds, bad input."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import tl_spec
from tl_spec import TLSpecError, zoo
from tl_spec.prompts import STANDARD_10
from tl_spec.corpus import load_corpus
from tl_spec.zoo.registry import MARKER, SETS, _ready

HAS_HOOKED = True
try:
    from transformer_lens import HookedTransformer  # noqa: F401
except ImportError:
    HAS_HOOKED = False


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TL_SPEC_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_corpus_is_real_english_with_provenance():
    corpus = load_corpus()
    meta = corpus.meta
    assert meta["license"].startswith("PSF-2.0") and meta["n_documents"] == len(corpus.documents)
    assert meta["n_characters"] > 1_500_000
    held = len(corpus.heldout) / len(corpus.documents)
    assert 0.03 < held < 0.08  # the id-hash rule holds out ~5 %
    assert not {d.id for d in corpus.heldout} & {d.id for d in corpus.train}
    topic = next(d for d in corpus.documents if d.id == "topic:assert")
    assert "assert" in topic.text and "expression" in topic.text


DEFAULT_NAMES = ["base-gqa", "base-mha", "base-swa"] + [
    f"{arch}-{kind}-{seed}" for arch in ("gqa", "mha", "swa") for kind in ("sft", "dpo")
    for seed in (1, 2, 3)]


def test_default_set_is_shipped_and_verified(cache):
    assert [m.name for m in SETS["default"]] == DEFAULT_NAMES  # 3 bases, 18 twins
    entries = {e.name: e for e in zoo.available()}
    total = 0
    for model in SETS["default"]:
        assert entries[model.name].ready, model.name
        path = zoo.model_dir(model.name)
        marker = json.loads((path / MARKER).read_text())
        assert marker["recipe"] == json.loads(json.dumps(model.recipe())), model.name
        assert marker["shipped_dtype"] == "float16" and len(marker["built_weights_sha256"]) == 64
        size = (path / "model.safetensors").stat().st_size
        assert 0.6e6 < size < 0.7e6, (model.name, size)  # float16: ~0.66 MB a model
        total += sum(f.stat().st_size for f in path.iterdir())
    assert total < 20e6, total  # the wheel stays small (measured: see docs/zoo.md)
    assert not entries["refit-L2-wd0-s0"].ready  # refits are built on demand


def test_twins_of_every_base_share_one_recipe():
    recipes = {m.name: m.recipe() for m in SETS["default"]}
    for arch in ("gqa", "mha", "swa"):
        for seed in (1, 2, 3):
            sft, dpo = recipes[f"{arch}-sft-{seed}"], recipes[f"{arch}-dpo-{seed}"]
            assert sft["parent"] == f"base-{arch}" and dpo["parent"] == f"{arch}-sft-{seed}"
            assert sft["seed"] == dpo["seed"] == seed
            assert sft["options"] == recipes[f"gqa-sft-{seed}"]["options"]
            assert dpo["options"] == recipes[f"gqa-dpo-{seed}"]["options"]
    families = zoo.twin_families(("swa",), seeds=(2,), backend="bridge")
    assert [f.name for f in families] == ["swa"] and len(families[0].dpo) == 1
    with pytest.raises(TLSpecError, match="archs must be distinct names"):
        zoo.twin_families(("gqa", "xl"))


def test_base_models_learned_the_language():
    for name in ("base-gqa", "base-mha", "base-swa"):
        m = json.loads((zoo.model_dir(name) / MARKER).read_text())["metrics"]
        assert m["heldout_loss"] < m["unigram_baseline"] - 1.5, name  # nats per token
        # short prompts right after <bos> too (the curriculum's copy rows also start with <bos>;
        # a build that learned "<bos> is followed by noise" lost 7.19 here; measured 5.84-5.97)
        model = zoo.load(name)
        with torch.inference_mode():
            short = np.mean([float(model(model.to_tokens(t), return_type="loss"))
                             for t in STANDARD_10])
        assert short < m["unigram_baseline"] - 0.3, name


@pytest.mark.parametrize("backend", ["bridge", "hooked"] if HAS_HOOKED else ["bridge"])
def test_zoo_models_load_on_both_backends(backend):
    model = zoo.load("base-swa", backend=backend)
    facts = tl_spec.describe(model, seq_len=128)
    assert facts.backend == backend and facts.window_binds and facts.attention == "GQA"


def test_trained_si_differs_from_random_init_beyond_the_interval(tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    trained_dir = zoo.model_dir("base-gqa")
    random_dir = tmp_path / "random"
    random = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(trained_dir))
    random.save_pretrained(random_dir)
    AutoTokenizer.from_pretrained(trained_dir).save_pretrained(random_dir)
    d = tl_spec.delta_si(tl_spec.load_model(random_dir), tl_spec.load_model(trained_dir),
                         STANDARD_10, n_resamples=2000)
    assert not d.interval.contains(0.0), d.summary()


def _sha(path: Path) -> str:
    return hashlib.sha256((path / "model.safetensors").read_bytes()).hexdigest()


def test_build_is_deterministic_and_independent_of_workers(tmp_path):
    only = ["base-gqa", "base-mha", "gqa-sft-1", "gqa-dpo-1"]
    kw = dict(only=only, max_steps=4, max_examples=48, progress=False)
    a = zoo.build("default", out=tmp_path / "a", workers=1, **kw)
    b = zoo.build("default", out=tmp_path / "b", workers=2, **kw)
    for name in only:
        assert _sha(a / name) == _sha(b / name), name
    assert _sha(a / "base-gqa") != _sha(a / "base-mha")
    assert _sha(a / "gqa-dpo-1") != _sha(a / "gqa-sft-1")
    assert tl_spec.load_model(a / "gqa-dpo-1").cfg.n_layers == 4


def test_interrupted_build_resumes_and_never_shows_half_models(tmp_path):
    out = tmp_path / "refits"
    names = "refit-L2-wd0-s0,refit-L2-wd0-s1"
    cmd = [sys.executable, "-m", "tl_spec.cli", "zoo", "build", "refits", "--out", str(out),
           "--only", names, "--workers", "1", "--max-steps", "60"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    deadline = time.time() + 240
    while time.time() < deadline and not _ready(out / "refit-L2-wd0-s0"):
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # mid-way through the second model
    proc.wait()
    assert _ready(out / "refit-L2-wd0-s0")
    assert not (out / "refit-L2-wd0-s1").exists()  # nothing half-written under its final name
    done: list[str] = []
    zoo.build("refits", out=out, only=names.split(","), max_steps=60, progress=False,
              on_done=lambda name, metrics: done.append(name))
    assert done == ["refit-L2-wd0-s1"]  # only the missing model was built
    assert not list(out.glob(".building-*"))


def test_bad_input(cache, tmp_path):
    with pytest.raises(TLSpecError, match="unknown zoo model 'base-xl'"):
        zoo.load("base-xl")
    with pytest.raises(TLSpecError, match="unknown zoo set"):
        zoo.build("huge", out=tmp_path)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(TLSpecError, match="cannot write to the zoo cache .* TL_SPEC_CACHE"):
        zoo.build("refits", out=blocker / "sub")
    with pytest.raises(TLSpecError, match="is not built; run `tl-spec zoo build refits`"):
        zoo.load("refit-L4-wd0.1-s3")


def test_corrupted_checkpoint_in_cache_is_refused(cache):
    bad = cache / "default" / "base-gqa"
    shutil.copytree(zoo.model_dir("base-gqa"), bad)
    data = bytearray((bad / "model.safetensors").read_bytes())
    data[-100] ^= 0xFF
    (bad / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(TLSpecError, match="does not match the SHA-256 .* delete the directory"):
        zoo.load("base-gqa")


def test_trained_base_has_previous_token_and_induction_heads(tmp_path):
    """Measured, against a random-init model of the same config (README: 'Evidence')."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from tl_spec.zoo.evidence import head_scores

    trained_dir = zoo.model_dir("base-gqa")
    random_dir = tmp_path / "random"
    AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(trained_dir)).save_pretrained(
        random_dir)
    AutoTokenizer.from_pretrained(trained_dir).save_pretrained(random_dir)
    trained = head_scores(tl_spec.load_model(trained_dir))
    random = head_scores(tl_spec.load_model(random_dir))
    assert trained["previous_token"].shape == trained["induction"].shape == (4, 4)
    for kind in ("previous_token", "induction"):
        assert trained[kind].max() > 3 * random[kind].max(), kind
        assert trained[kind].max() > 0.3, kind
    # induction heads read a previous-token head, so they sit above layer 0
    assert np.unravel_index(trained["induction"].argmax(), (4, 4))[0] > 0


@pytest.mark.skipif(not HAS_HOOKED, reason="TransformerLens' head detector needs HookedTransformer")
def test_head_scores_agree_with_transformer_lens_head_detector():
    """TransformerLens' own detector (an independent implementation) finds the same heads."""
    from transformer_lens.head_detector import detect_head, get_induction_head_detection_pattern

    from tl_spec.zoo.evidence import head_scores

    model = zoo.load("base-gqa", backend="hooked")
    ours = head_scores(model)
    text = "The interpreter reads each line, compiles it and runs the result in a new frame."
    tl_prev = detect_head(model, text, "previous_token_head").numpy()
    tl_ind = detect_head(model, text + " " + text, "induction_head").numpy()
    # the same heads stand out (several heads can tie, so compare the whole [layer, head] map;
    # measured: r = 0.99 and 0.98)
    for tl_score, kind in ((tl_prev, "previous_token"), (tl_ind, "induction")):
        assert np.corrcoef(tl_score.ravel(), ours[kind].ravel())[0, 1] > 0.9, kind
        assert set(np.flatnonzero(tl_score > tl_score.max() / 2)) == set(
            np.flatnonzero(ours[kind] > ours[kind].max() / 2)), kind
    # TL divides by every query row, not only those with a target: the best induction head puts
    # most of the attention of the second copy's rows on the token after the first occurrence
    tokens = model.to_tokens(text + " " + text).cpu()
    n_targets = float(get_induction_head_detection_pattern(tokens).sum())
    assert tl_ind.max() * tokens.shape[1] / n_targets > 0.3


def test_copy_rows_mask_exactly_the_unpredictable_targets():
    from tl_spec.zoo.train import copy_sequences

    rng = np.random.default_rng(3)
    x, y = copy_sequences(rng, 64, 128, vocab_size=2048, bos=1)
    assert x.shape == y.shape == (64, 128) and (x[:, 0] == 1).all()
    for row_x, row_y in zip(x.numpy(), y.numpy()):
        masked = np.flatnonzero(row_y == -100)
        length = len(masked) - 1  # the first copy's targets plus the repeat's first token
        assert 8 <= length <= 32 and (masked == np.arange(length + 1)).all()
        # every unmasked target is the next input token and the token one period earlier
        kept = np.arange(length + 1, 127)
        assert (row_y[kept] == row_x[kept + 1]).all()
        assert (row_y[kept] == row_x[kept + 1 - length]).all()
        assert (row_x[1:] >= 3).all()  # no special tokens inside the block


def test_induction_probe_matches_head_scores_on_another_implementation():
    """The training-time probe (Hugging Face attentions) and `head_scores` (TransformerLens hook
    patterns) give the same best induction score on the shipped base model."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tl_spec.zoo.evidence import head_scores
    from tl_spec.zoo.train import induction_probe

    path = zoo.model_dir("base-gqa")
    tok = AutoTokenizer.from_pretrained(path)
    hf = AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager",
                                              torch_dtype=torch.float32)
    probe = induction_probe(hf, vocab_size=len(tok), bos=tok.bos_token_id)
    ours = head_scores(tl_spec.load_model(path))["induction"].max()
    assert probe == pytest.approx(ours, abs=1e-5) and probe > 0.8  # measured: 0.8975 both


def test_train_config_refuses_bad_curriculum_values():
    from tl_spec.zoo.train import TrainConfig

    with pytest.raises(TLSpecError, match="copy_frac is a fraction .* got 1.5"):
        TrainConfig(copy_frac=1.5)
    with pytest.raises(TLSpecError, match="bos_frac"):
        TrainConfig(bos_frac=-0.1)
    with pytest.raises(TLSpecError, match="copy_check >= 1"):
        TrainConfig(copy_check=0)
    with pytest.raises(TLSpecError, match="copy_until is an induction score"):
        TrainConfig(copy_until=2.0)
