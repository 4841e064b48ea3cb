"""Unit tests on synthetic inputs with known answers: no model involved.

Covers the SI maths of :mod:`tl_spec.metrics.specialization` and the pattern reducers of
:mod:`tl_spec.metrics.patterns` (head correlations, column and row entropies, entry masks).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from tl_spec.errors import TLSpecError
from tl_spec.metrics import specialization as spec

patterns = pytest.importorskip("tl_spec.metrics.patterns")

F64 = torch.float64


def _two_vectors_with_corr(r: float, m: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """x, y of length m whose Pearson correlation is exactly r (up to rounding)."""
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(np.column_stack([np.ones(m), rng.normal(size=(m, 2))]))[0]
    u, v = basis[:, 1], basis[:, 2]  # orthonormal and orthogonal to the constant vector
    return 0.3 + u, 0.3 + r * u + math.sqrt(1 - r * r) * v


def _causal(n: int) -> torch.Tensor:
    return torch.tril(torch.ones(n, n, dtype=torch.bool))


# ----------------------------------------------------------------------------- specialization.py


def test_upper_mean_ignores_nan_and_is_nan_when_empty():
    c = np.array([[1.0, 0.2, np.nan], [0.2, 1.0, 0.6], [np.nan, 0.6, 1.0]])
    assert spec.upper_mean(c) == pytest.approx(0.4)
    assert np.isnan(spec.upper_mean(np.full((3, 3), np.nan)))


def test_corrcoef_rows_matches_numpy_and_is_silent_on_flat_rows():
    x = np.random.default_rng(1).normal(size=(5, 40))
    np.testing.assert_allclose(spec.corrcoef_rows(x), np.corrcoef(x), atol=1e-12)
    x[2] = 0.25
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        c = spec.corrcoef_rows(x)
    assert np.isnan(c[2]).all() and np.isnan(c[:, 2]).all()
    keep = [0, 1, 3, 4]
    np.testing.assert_allclose(c[np.ix_(keep, keep)], np.corrcoef(x[keep]), atol=1e-12)


def test_identical_heads_give_zero_si():
    s = spec.si_from_correlations(np.ones((3, 2, 4, 4)))
    np.testing.assert_array_equal(s.per_prompt_layer, 0.0)
    np.testing.assert_array_equal(s.per_layer, 0.0)
    np.testing.assert_array_equal(s.head_correlation, 1.0)
    assert s.undefined_heads == 0


def test_si_closed_form_two_heads():
    r = 0.37
    c = np.array([[[[1.0, r], [r, 1.0]]]])
    s = spec.si_from_correlations(c)
    assert s.per_layer[0] == pytest.approx(1 - r, abs=1e-15)
    np.testing.assert_allclose(s.head_correlation, [[r, r]], atol=1e-15)


def test_si_invariant_to_head_permutation():
    x = np.random.default_rng(2).normal(size=(6, 30))
    c = np.corrcoef(x)[None, None]
    perm = np.random.default_rng(3).permutation(6)
    cp = c[..., perm, :][..., :, perm]
    a, b = spec.si_from_correlations(c), spec.si_from_correlations(cp)
    assert a.per_layer[0] == pytest.approx(b.per_layer[0], abs=1e-14)
    np.testing.assert_allclose(a.head_correlation[0, perm], b.head_correlation[0], atol=1e-14)


def test_zero_variance_head_is_excluded_and_counted():
    x = np.random.default_rng(4).normal(size=(4, 50))
    x[1] = 3.0
    c = spec.corrcoef_rows(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s = spec.si_from_correlations(c[None, None])
    keep = [0, 2, 3]
    ck = np.corrcoef(x[keep])
    expected = 1 - np.mean([ck[0, 1], ck[0, 2], ck[1, 2]])
    assert s.per_layer[0] == pytest.approx(expected, abs=1e-12)
    assert not np.isnan(s.per_layer).any()
    assert s.undefined_heads == 1
    assert np.isnan(s.head_correlation[0, 1])
    assert s.head_correlation[0, 0] == pytest.approx((ck[0, 1] + ck[0, 2]) / 2, abs=1e-12)


def test_gqa_group_split_known_blocks():
    c = np.full((1, 1, 4, 4), 0.1)
    c[..., :2, :2] = c[..., 2:, 2:] = 0.9
    within, between = spec.gqa_group_split(c, n_kv_heads=2)
    np.testing.assert_allclose(within, 0.9)
    np.testing.assert_allclose(between, 0.1)


def test_entropy_profile_hand_computed():
    # heads 0 and 1 perfectly correlated across layers, head 2 anti-correlated with both
    e = np.array([[0.1, 0.2, 0.9], [0.2, 0.4, 0.8], [0.3, 0.6, 0.7]])
    # upper triangle: (1, -1, -1) -> mean -1/3 -> SI = 4/3
    assert spec.si_from_entropy_profile(e) == pytest.approx(4 / 3, abs=1e-12)
    # a constant head has undefined correlation: only the (0, 1) pair counts -> SI = 0
    e[:, 2] = 0.5
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert spec.si_from_entropy_profile(e) == pytest.approx(0.0, abs=1e-12)
    # the paper's own formula on a generic matrix
    g = np.random.default_rng(5).uniform(size=(6, 4))
    expected = 1 - np.nanmean(np.corrcoef(g.T)[np.triu_indices(4, 1)])
    assert spec.si_from_entropy_profile(g) == pytest.approx(expected, abs=1e-12)


def test_entropy_profile_rejects_bad_shapes():
    with pytest.raises(TLSpecError):
        spec.si_from_entropy_profile(np.ones((1, 4)))
    with pytest.raises(TLSpecError):
        spec.si_from_entropy_profile(np.ones(4))


def test_si_from_row_entropy():
    n = np.array([4, 8])
    row = np.stack([np.full((1, 2), np.log(4.0)), np.full((1, 2), np.log(8.0) / 4)])
    per_head, per_layer = spec.si_from_row_entropy(row, n)
    np.testing.assert_allclose(per_head, [[[0.0, 0.0]], [[0.75, 0.75]]], atol=1e-15)
    np.testing.assert_allclose(per_layer, [[0.0], [0.75]], atol=1e-15)


# ----------------------------------------------------------------------------- patterns.py


@pytest.mark.parametrize("window", [None, 1, 3])
@pytest.mark.parametrize("region", ["lower", "full"])
def test_entry_mask_matches_loops(region, window):
    tv = torch.tensor([[True] * 7, [False, False] + [True] * 5, [True] * 5 + [False, False]])
    m = patterns.entry_mask(tv, region=region, window=window if region == "lower" else None)
    for b in range(3):
        for q in range(7):
            for k in range(7):
                want = bool(tv[b, q] and tv[b, k])
                if region == "lower":
                    want = want and k <= q and (window is None or q - k < window)
                assert bool(m[b, q, k]) == want, (b, q, k)


def _random_pattern(b: int, h: int, n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, h, n, n, generator=g, dtype=F64) * 3
    logits = logits.masked_fill(~_causal(n), float("-inf"))
    return logits.softmax(-1)


def test_head_correlations_match_numpy_with_ragged_masks():
    pat = _random_pattern(2, 5, 9, seed=6)
    tv = torch.ones(2, 9, dtype=torch.bool)
    tv[1, 6:] = False  # right padding on prompt 1
    pat[1, :, 6:, :] = float("nan")  # padded rows may hold anything, NaN included
    for region in ("lower", "full"):
        valid = patterns.entry_mask(tv, region=region)
        c = patterns.head_correlations(pat, valid, dtype=F64)
        assert c.dtype == F64 and c.shape == (2, 5, 5)
        for b in range(2):
            x = np.stack([pat[b, h][valid[b]].numpy() for h in range(5)])
            np.testing.assert_allclose(c[b].numpy(), np.corrcoef(x), atol=1e-12)


@pytest.mark.parametrize("budget", [1, 700, 10**9])  # one query row, a few rows, one chunk
def test_reducers_are_independent_of_the_row_chunking(monkeypatch, budget):
    """The statistics are built in query-row chunks of at most CHUNK_BYTES (with the causal
    upper triangle skipped per chunk); any chunking gives the numpy reference."""
    monkeypatch.setattr(patterns, "CHUNK_BYTES", budget)
    pat = _random_pattern(2, 4, 11, seed=9)
    tv = torch.ones(2, 11, dtype=torch.bool)
    tv[1, 7:] = False
    pat[1, :, 7:, :] = float("nan")  # padded rows may hold anything
    for region in ("lower", "full"):
        valid = patterns.entry_mask(tv, region=region)
        c = patterns.head_correlations(pat, valid, dtype=F64)
        x = patterns.cross_correlations(pat, pat.flip(1), valid, dtype=F64)
        for b in range(2):
            v = np.stack([pat[b, h][valid[b]].numpy() for h in range(4)])
            np.testing.assert_allclose(c[b].numpy(), np.corrcoef(v), atol=1e-12)
            np.testing.assert_allclose(x[b].numpy(), np.corrcoef(v, v[::-1])[:4, 4:], atol=1e-12)
    col = patterns.column_entropy(pat, tv, tv, dtype=F64)
    row = patterns.row_entropy(pat, tv, tv, dtype=F64)
    for b in range(2):
        n = int(tv[b].sum())
        a = pat[b, :, :n, :n].double().numpy()
        mean = a.mean(axis=1)  # [heads, keys]
        q = mean / mean.sum(-1, keepdims=True)
        want = [-(r[r > 0] * np.log2(r[r > 0])).sum() / np.log2((r > 0).sum()) for r in q]
        np.testing.assert_allclose(col[b].numpy(), want, atol=1e-12)
        ent = -(np.clip(a, 1e-10, None) * np.log(np.clip(a, 1e-10, None))).sum(-1).mean(-1)
        np.testing.assert_allclose(row[b].numpy(), ent, atol=1e-6)


def test_head_correlations_identical_heads_give_si_zero():
    one = _random_pattern(1, 1, 6, seed=7)
    pat = one.expand(1, 4, 6, 6).clone()
    c = patterns.head_correlations(pat, patterns.entry_mask(torch.ones(1, 6, dtype=torch.bool)), dtype=F64)
    np.testing.assert_allclose(c.numpy(), 1.0, atol=1e-12)
    assert spec.si_from_correlations(c.numpy()[:, None]).per_layer[0] == pytest.approx(0, abs=1e-12)


def test_head_correlations_closed_form_r():
    n, r = 6, -0.42
    valid = patterns.entry_mask(torch.ones(1, n, dtype=torch.bool), region="lower")
    m = int(valid.sum())
    x, y = _two_vectors_with_corr(r, m)
    pat = torch.full((1, 2, n, n), 7.0, dtype=F64)  # junk outside the valid entries
    pat[0, 0][valid[0]] = torch.from_numpy(x)
    pat[0, 1][valid[0]] = torch.from_numpy(y)
    c = patterns.head_correlations(pat, valid, dtype=F64)
    assert c[0, 0, 1].item() == pytest.approx(r, abs=1e-12)
    assert spec.si_from_correlations(c.numpy()[:, None]).per_layer[0] == pytest.approx(1 - r, abs=1e-12)


def test_head_correlations_permutation_equivariant():
    pat = _random_pattern(1, 6, 8, seed=8)
    valid = patterns.entry_mask(torch.ones(1, 8, dtype=torch.bool))
    perm = torch.randperm(6, generator=torch.Generator().manual_seed(9))
    c = patterns.head_correlations(pat, valid, dtype=F64)
    cp = patterns.head_correlations(pat[:, perm], valid, dtype=F64)
    np.testing.assert_allclose(cp.numpy(), c[:, perm][:, :, perm].numpy(), atol=1e-12)
    a = spec.si_from_correlations(c.numpy()[:, None]).per_layer[0]
    b = spec.si_from_correlations(cp.numpy()[:, None]).per_layer[0]
    assert a == pytest.approx(b, abs=1e-12)


def test_head_correlations_zero_variance_head_nan_and_si_from_the_rest():
    pat = _random_pattern(1, 4, 7, seed=10)
    valid = patterns.entry_mask(torch.ones(1, 7, dtype=torch.bool), region="full")
    pat[0, 2] = 1.0 / 7  # flat over every entry: zero variance
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        c = patterns.head_correlations(pat, valid, dtype=F64)
    assert torch.isnan(c[0, 2]).all() and torch.isnan(c[0, :, 2]).all()
    keep = [0, 1, 3]
    assert not torch.isnan(c[0][keep][:, keep]).any()
    s = spec.si_from_correlations(c.numpy()[:, None])
    x = np.stack([pat[0, h][valid[0]].numpy() for h in keep])
    ck = np.corrcoef(x)
    assert s.per_layer[0] == pytest.approx(1 - ck[np.triu_indices(3, 1)].mean(), abs=1e-12)
    assert s.undefined_heads == 1


def _column_entropy_ref(a: np.ndarray) -> float:
    p = a.mean(0)
    p = p / p.sum()
    p = p[p != 0]
    return 0.0 if len(p) < 2 else float(-(p * np.log2(p)).sum() / np.log2(len(p)))


def test_column_entropy_known_values_and_padding():
    ones = torch.ones(1, 4, dtype=torch.bool)
    uniform = torch.full((1, 1, 4, 4), 0.25, dtype=F64)
    assert patterns.column_entropy(uniform, ones, ones, dtype=F64).item() == pytest.approx(1.0)
    sink = torch.zeros(1, 1, 4, 4, dtype=F64)
    sink[..., 0] = 1.0
    assert patterns.column_entropy(sink, ones, ones, dtype=F64).item() == 0.0
    # random causal patterns, left-padded by 3 positions: only the valid block counts
    pat = _random_pattern(1, 3, 6, seed=11)
    padded = torch.full((1, 3, 9, 9), float("nan"), dtype=F64)
    padded[..., 3:, 3:] = pat
    tv = torch.tensor([[False] * 3 + [True] * 6])
    got = patterns.column_entropy(padded, tv, tv, dtype=F64)[0].numpy()
    want = [_column_entropy_ref(pat[0, h].numpy()) for h in range(3)]
    np.testing.assert_allclose(got, want, atol=1e-12)


def test_row_entropy_uniform_causal_rows_and_padding():
    n = 5
    pat = (_causal(n).to(F64) / torch.arange(1, n + 1, dtype=F64)[:, None])[None, None]
    want = np.mean([math.log(q + 1) for q in range(n)])
    ones = torch.ones(1, n, dtype=torch.bool)
    assert patterns.row_entropy(pat, ones, ones, dtype=F64).item() == pytest.approx(want, abs=1e-12)
    # right-padded by 2: same answer
    padded = torch.full((1, 1, n + 2, n + 2), float("nan"), dtype=F64)
    padded[..., :n, :n] = pat
    tv = torch.tensor([[True] * n + [False, False]])
    assert patterns.row_entropy(padded, tv, tv, dtype=F64).item() == pytest.approx(want, abs=1e-12)
    # random pattern against the GUIDE's formula: -(a log clip(a, 1e-10)).sum(-1), mean over rows
    rp = _random_pattern(1, 2, 7, seed=12)
    a = rp[0].numpy()
    ref = (-(a * np.log(np.clip(a, 1e-10, None))).sum(-1)).mean(-1)
    ones7 = torch.ones(1, 7, dtype=torch.bool)
    np.testing.assert_allclose(patterns.row_entropy(rp, ones7, ones7, dtype=F64)[0].numpy(), ref, atol=1e-12)


# ----------------------------------------------------------------------------- capture hooks


def test_pattern_stats_is_a_hookset_bound_per_batch(tl_model):
    """PatternStats follows the HookSet protocol: iteration gives the (name, fn) pairs, and
    ``bind(tokens, mask)`` sets the mask its hooks read (right-padded batch == prompts alone)."""
    from tl_spec.hooks.base import HookSet
    from tl_spec.hooks.capture import PatternStats, pattern_hook_name
    from tl_spec.prompts import STANDARD_10

    model = tl_model("llama-gqa", "bridge")
    rows = [model.to_tokens(p)[0].cpu() for p in STANDARD_10[:3]]
    n = max(len(r) for r in rows)
    tokens = torch.zeros(len(rows), n, dtype=torch.long)
    mask = torch.zeros(len(rows), n, dtype=torch.long)
    for i, r in enumerate(rows):
        tokens[i, : len(r)], mask[i, : len(r)] = r, 1
    assert len({len(r) for r in rows}) > 1  # really ragged
    stats = PatternStats(model, stats=("correlation",))
    assert isinstance(stats, HookSet)
    names = [f"blocks.{layer}.attn.hook_pattern" for layer in range(model.cfg.n_layers)]
    assert names == [pattern_hook_name(x) for x in range(len(names))]
    last = model.cfg.n_layers - 1
    checks = [f"blocks.{layer}.hook_{'attn_out' if layer == last else 'resid_post'}"
              for layer in range(model.cfg.n_layers)]
    assert [name for name, _ in stats] == names + checks  # patterns, then the finiteness checks
    assert stats.bind(tokens, mask) is stats and stats.attention_mask is mask
    with torch.inference_mode(), model.hooks(fwd_hooks=[*stats]):
        model(tokens, return_type=None)  # right padding: real tokens never see the pads
    got = stats.collect()["correlation"]
    for i, r in enumerate(rows):
        one = PatternStats(model, stats=("correlation",)).bind(r[None], None)
        with torch.inference_mode():
            model.run_with_hooks(r[None], return_type=None, fwd_hooks=list(one))
        np.testing.assert_allclose(got[i], one.collect()["correlation"][0], atol=1e-9)
