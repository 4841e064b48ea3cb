"""Head stability, CKA, matching, head importance and the seed-004 study.

Checks against closed forms (CKA's published formula and invariances, a model against itself,
a copy with heads permuted inside every layer), a brute-force one-head-at-a-time ablation, and
the random-init null.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from ablation_reference import zero_ablation_loss_change
from conftest import BACKENDS, HAS_HOOKED, LOADABLE
from safetensors.torch import load_file, save_file

import tl_spec
from tl_spec import TLSpecError
from tl_spec.experiments.importance import head_importance
from tl_spec.experiments.stability import head_stability
from tl_spec.corpus import heldout_texts
from tl_spec.metrics.cka import block_hsic, centered_cross, cka_from_hsic, linear_cka, output_factors
from tl_spec.metrics.matching import best_match, match_heads, matched_similarity
from tl_spec.metrics.patterns import cross_correlations, entry_mask
from tl_spec.zoo.tiny import build_random_checkpoint

TEXTS = [f"Item {i}: the function returns a list of {i + 2} values and raises an error if the "
         f"argument is empty." for i in range(12)]
PERM = torch.tensor([3, 0, 7, 1, 6, 2, 5, 4])


# ---- CKA ---------------------------------------------------------------------------------------

def _cka_kernel(x: np.ndarray, y: np.ndarray) -> float:
    """Kornblith et al. (2019) Eq. via centred Gram matrices: HSIC(K,L)/sqrt(HSIC(K,K)HSIC(L,L))."""
    n = x.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n
    k, l_ = h @ (x @ x.T) @ h, h @ (y @ y.T) @ h
    return float(np.sum(k * l_) / np.sqrt(np.sum(k * k) * np.sum(l_ * l_)))


def test_linear_cka_matches_the_published_formula_and_its_invariances():
    rng = np.random.default_rng(0)
    for _ in range(5):
        x, y = rng.normal(size=(40, 6)), rng.normal(size=(40, 3)) + 0.3
        y = np.concatenate([y, x[:, :2] @ rng.normal(size=(2, 2))], axis=1)
        assert linear_cka(x, y) == pytest.approx(_cka_kernel(x, y), abs=1e-12)
        q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
        assert linear_cka(x @ q, y) == pytest.approx(linear_cka(x, y), abs=1e-12)
        assert linear_cka(7.5 * x, 0.1 * y) == pytest.approx(linear_cka(x, y), abs=1e-12)
        assert linear_cka(x + 3.0, y) == pytest.approx(linear_cka(x, y), abs=1e-12)
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)
    assert np.isnan(linear_cka(np.ones((5, 2)), x[:5]))


def test_streamed_block_cka_equals_direct_cka_per_head():
    rng = np.random.default_rng(1)
    heads, d = 3, 4
    xa, xb = rng.normal(size=(60, heads * d)), rng.normal(size=(60, heads * d))
    xb[:, :d] += 2 * xa[:, d: 2 * d]
    parts = np.array_split(np.arange(60), 4)  # streamed in four chunks
    sums = lambda p, q: sum(p[i].T @ q[i] for i in parts)  # noqa: E731
    cross = centered_cross(sums(xa, xb), xa.sum(0), xb.sum(0), 60)
    diag_a = np.diagonal(block_hsic(centered_cross(sums(xa, xa), xa.sum(0), xa.sum(0), 60), 3, 3))
    diag_b = np.diagonal(block_hsic(centered_cross(sums(xb, xb), xb.sum(0), xb.sum(0), 60), 3, 3))
    got = cka_from_hsic(block_hsic(cross, heads, heads), diag_a, diag_b)
    want = np.array([[linear_cka(xa[:, i * d:(i + 1) * d], xb[:, j * d:(j + 1) * d])
                      for j in range(heads)] for i in range(heads)])
    np.testing.assert_allclose(got, want, atol=1e-12)
    assert got.argmax(axis=1)[1] == 0


def test_output_factors_preserve_cka_of_head_outputs():
    torch.manual_seed(0)
    w = torch.randn(2, 4, 16, dtype=torch.float64)
    z = torch.randn(50, 2, 4, dtype=torch.float64)
    r = output_factors(w)
    full = [np.asarray(z[:, h] @ w[h]) for h in range(2)]
    small = [np.asarray(z[:, h] @ r[h]) for h in range(2)]
    assert linear_cka(small[0], small[1]) == pytest.approx(linear_cka(full[0], full[1]), abs=1e-12)


# ---- matching and cross-correlation ------------------------------------------------------------

def test_matching_recovers_a_permutation_and_handles_nan():
    rng = np.random.default_rng(2)
    base = rng.uniform(0, 0.5, size=(6, 6))
    perm = rng.permutation(6)
    sim = base.copy()
    sim[np.arange(6), perm] = 0.9
    assert match_heads(sim).tolist() == perm.tolist()
    assert matched_similarity(sim).tolist() == [0.9] * 6
    sim[0, :] = np.nan
    assert sorted(match_heads(sim).tolist()) == list(range(6))
    assert np.isnan(best_match(sim)[0])


def test_cross_correlations_equal_numpy_corrcoef_over_valid_entries():
    torch.manual_seed(3)
    pa, pb = torch.rand(2, 3, 5, 5).softmax(-1), torch.rand(2, 3, 5, 5).softmax(-1)
    token_valid = torch.tensor([[True] * 5, [True, True, True, False, False]])
    valid = entry_mask(token_valid, region="lower", window=3)
    got = cross_correlations(pa, pb, valid)
    for b in range(2):
        m = valid[b].numpy()
        xa = pa[b].numpy()[:, m]
        xb = pb[b].numpy()[:, m]
        want = np.corrcoef(np.concatenate([xa, xb]))[:3, 3:]
        np.testing.assert_allclose(got[b].numpy(), want, atol=1e-10)


# ---- models ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> dict[str, Path]:
    """Two independent random-init MHA models, and a copy of the first with heads permuted."""
    root = tmp_path_factory.mktemp("stab")
    a = build_random_checkpoint(root / "a", arch="llama-mha", seed=0)
    b = build_random_checkpoint(root / "b", arch="llama-mha", seed=1)
    p = root / "perm"
    shutil.copytree(a, p)
    weights = load_file(str(a / "model.safetensors"))
    config = json.loads((a / "config.json").read_text())
    heads, d_head = config["num_attention_heads"], config["head_dim"]
    index = (PERM[:, None] * d_head + torch.arange(d_head)).flatten()  # new head h <- old PERM[h]
    for name, w in list(weights.items()):
        if any(k in name for k in ("q_proj.weight", "k_proj.weight", "v_proj.weight")):
            weights[name] = w[index].contiguous()
        elif "o_proj.weight" in name:
            weights[name] = w[:, index].contiguous()
    save_file(weights, str(p / "model.safetensors"), metadata={"format": "pt"})
    assert heads == len(PERM)
    return {"a": a, "b": b, "perm": p}


def _load(path: Path, backend: str):
    try:
        return tl_spec.load_model(path, backend=backend)
    except TLSpecError as err:
        pytest.skip(f"{backend}: {err}")


@pytest.mark.parametrize("measure", ["pattern", "output"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_self_and_permuted_copy_are_perfectly_stable(ckpts, backend, measure):
    a, perm = _load(ckpts["a"], backend), _load(ckpts["perm"], backend)
    r = head_stability([a, a], TEXTS, measure=measure, null=0, n_blocks=4, n_resamples=200)
    np.testing.assert_allclose(r.stability, 1.0, atol=1e-6)
    assert (r.matching[0] == np.arange(8)).all()
    np.testing.assert_allclose(r.resid_cka, 1.0, atol=1e-9)
    r = head_stability([perm, a], TEXTS, measure=measure, null=0, n_blocks=4, n_resamples=200)
    # head h of the permuted copy is head PERM[h] of the original
    assert (r.matching[0] == PERM.numpy()).all(), r.matching[0]
    np.testing.assert_allclose(r.per_head_stability, 1.0, atol=1e-6)
    np.testing.assert_allclose(r.resid_cka, 1.0, atol=1e-9)
    assert r.intervals["stability"][0].low == pytest.approx(1.0, abs=1e-6)


def test_a_trained_model_against_a_random_init_one_sits_at_the_null_level():
    trained = tl_spec.zoo.load("base-mha", backend="bridge")
    texts = heldout_texts(12)
    nulls = [tl_spec.models.random_init_like(trained, s) for s in (11, 12, 13)]
    level = head_stability([trained, trained], texts, measure="output", null=nulls, n_blocks=6,
                           n_resamples=200).null
    fresh = tl_spec.models.random_init_like(trained, 14)
    got = head_stability([trained, fresh], texts, measure="output", null=0, n_blocks=6,
                         n_resamples=200).stability
    np.testing.assert_allclose(got, level, atol=0.03)
    assert (got < 0.5).all()


def test_refits_are_stable_above_chance_on_both_backends(tmp_path, monkeypatch):
    monkeypatch.setenv("TL_SPEC_CACHE", str(tmp_path))
    names = [f"refit-L2-wd0-s{s}" for s in range(3)]
    tl_spec.zoo.build("refits", only=names, max_steps=80, progress=False)
    texts = heldout_texts(12)
    out = {}
    for backend in LOADABLE:
        models = [tl_spec.zoo.load(n, backend=backend) for n in names]
        out[backend] = head_stability(models, texts, measure="output", null=1, n_blocks=6,
                                      n_resamples=200)
    if HAS_HOOKED:
        np.testing.assert_allclose(out["bridge"].stability, out["hooked"].stability, atol=1e-5)
    r = out["bridge"]
    # 80 steps of training: layer 0 is already reproducible across seeds, far above chance
    assert r.above_null[0] and r.stability[0] > r.null[0] + 0.2, r.table()
    assert r.per_head_stability.shape == (3, 2, 8) and r.similarity.shape == (3, 2, 8, 8)
    path = tmp_path / "stab.json"
    r.to_json(path)
    back = tl_spec.load_result(path)
    np.testing.assert_allclose(back.stability, r.stability)
    assert back.intervals["stability"][1].low == r.intervals["stability"][1].low
    assert (back.matching == r.matching).all()
    idx = np.zeros(6, dtype=int)
    assert r.profile(idx)["stability"].shape == (2,)
    with pytest.raises(TLSpecError, match="computed in this session"):
        back.profile(idx)
    # the study on two tiny groups runs end to end and is honest about what it cannot test
    groups = [tl_spec.StudyGroup("L2-wd0", 2, 0.0, [tl_spec.zoo.load(n) for n in names[:2]]),
              tl_spec.StudyGroup("L2-wd0-b", 2, 0.1, [tl_spec.zoo.load(n) for n in names[1:]])]
    study = tl_spec.stability_study(groups, prompts=texts, texts=TEXTS[:4], n_blocks=6, null=1,
                                    n_resamples=200)
    assert len(study.claims) == 6
    assert [c["holds"] for c in study.claims[:3]] == [None, None, None]  # one depth, 2 layers
    assert study.claims[4]["holds"] in (True, False)
    assert "not testable" in study.table()
    imp = head_importance(groups[0].models[0], TEXTS[:3], ablations=("zero",))
    page = tl_spec.viz.write_report([r, study, imp], tmp_path / "report").read_text()
    for title in ("Head stability (output)", "Head-stability claims", "Head importance", "not testable",
                  "Matching: "):
        assert title in page, title
    study.to_json(tmp_path / "study.json")
    assert tl_spec.load_result(tmp_path / "study.json").claims[4]["effect"] == pytest.approx(
        study.claims[4]["effect"])


# ---- head importance ---------------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_importance_equals_one_head_at_a_time_and_constant_heads_are_free(ckpts, backend, tmp_path):
    model = _load(ckpts["a"], backend)
    imp = head_importance(model, TEXTS[:5], heads_per_pass=3)
    layer, head = 1, 5
    want = zero_ablation_loss_change(model, TEXTS[:5], layer=layer, head=head,
                                     clean_loss=imp.clean_loss)
    assert imp.zero_ablation[layer, head] == pytest.approx(want, abs=1e-6)
    assert np.abs(imp.mean_ablation).max() > 1e-4

    # a head whose value is a constant bias (W_V = 0, b_V = c): its z is c at every token, so mean
    # ablation changes nothing, while zero ablation removes a real contribution
    path = build_random_checkpoint(tmp_path / "gpt2", arch="gpt2", seed=0)
    weights = load_file(str(path / "model.safetensors"))
    d_model, d_head = 64, 8
    cols = slice(2 * d_model + head * d_head, 2 * d_model + (head + 1) * d_head)
    weights[f"transformer.h.{layer}.attn.c_attn.weight"][:, cols] = 0.0
    weights[f"transformer.h.{layer}.attn.c_attn.bias"][cols] = torch.linspace(-2, 2, d_head)
    save_file(weights, str(path / "model.safetensors"), metadata={"format": "pt"})
    const = _load(path, backend)
    imp = head_importance(const, TEXTS[:5])
    assert imp.mean_ablation[layer, head] == pytest.approx(0.0, abs=1e-6)
    assert abs(imp.zero_ablation[layer, head]) > 1e-4
    assert np.abs(imp.mean_ablation).max() > 1e-4


# ---- bad input ---------------------------------------------------------------------------------

def test_bad_input_is_refused_before_any_work(ckpts, tmp_path):
    a = _load(ckpts["a"], "bridge")
    gqa = tl_spec.load_model(build_random_checkpoint(tmp_path / "g", arch="llama-gqa"),
                             backend="bridge")
    with pytest.raises(TLSpecError, match="two or more models"):
        head_stability([a], TEXTS)
    with pytest.raises(TLSpecError, match="two or more models"):
        head_stability([a], TEXTS, n_blocks=4)
    with pytest.raises(TLSpecError, match="different architectures .*n_kv_heads"):
        head_stability([a, gqa], TEXTS, n_blocks=4)
    with pytest.raises(TLSpecError, match="unknown measure"):
        head_stability([a, a], TEXTS, measure="weights", n_blocks=4)
    with pytest.raises(TLSpecError, match="n_blocks"):
        head_stability([a, a], TEXTS[:3], n_blocks=8)
    with pytest.raises(TLSpecError, match="different architectures .*n_layers: 3 vs 4"):
        head_stability([a, tl_spec.zoo.load("base-mha", backend="bridge")], TEXTS, n_blocks=4)
    # same architecture as the zoo's base-mha, but the tiny tokenizer: refused before any forward
    four = build_random_checkpoint(tmp_path / "four", arch="llama-mha", num_hidden_layers=4,
                                   num_attention_heads=4, num_key_value_heads=4)
    with pytest.raises(TLSpecError, match="different tokenizers"):
        head_stability([tl_spec.load_model(four, backend="bridge"),
                        tl_spec.zoo.load("base-mha", backend="bridge")], TEXTS, n_blocks=4)
    with pytest.raises(TLSpecError, match="unknown ablation"):
        head_importance(a, TEXTS, ablations=("resample",))


def test_cli_stability(ckpts, capsys, tmp_path, monkeypatch):
    from tl_spec.cli import main

    monkeypatch.setenv("TL_SPEC_CACHE", str(tmp_path / "empty-cache"))
    assert main(["stability", "--study", "refits", "--seeds", "2"]) == 2
    assert "is not built; run `tl-spec zoo build refits`" in capsys.readouterr().err

    out, prompts = tmp_path / "s.json", tmp_path / "prompts.txt"
    prompts.write_text("\n".join(TEXTS) + "\n")
    assert main(["stability", str(ckpts["a"]), str(ckpts["perm"]), "--null", "0", "--prompts",
                 str(prompts), "--n-blocks", "4", "--n-resamples", "200", "--json", str(out)]) == 0
    assert "stability" in capsys.readouterr().out
    # head i of the original is head j of the copy where PERM[j] == i
    assert (tl_spec.load_result(out).matching[0] == np.argsort(PERM.numpy())).all()
    assert main(["stability", str(ckpts["a"])]) == 2
    assert "two or more models" in capsys.readouterr().err
    assert main(["stability", str(ckpts["a"]), str(ckpts["b"]), "--measure", "weights"]) == 2
    assert "invalid choice: 'weights'" in capsys.readouterr().err
