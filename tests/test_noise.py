"""Noise hook points, perturbation probe, noise sensitivity and the sweep engine."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import HAS_HOOKED, LOADABLE

import tl_spec
from tl_spec import TLSpecError
from tl_spec.cli import main
from tl_spec.experiments.sensitivity import SensitivityResult, compare_sensitivity
from tl_spec.experiments.sweep import NoiseCondition, run_sweep
from tl_spec.hooks import noise, resolve_layers
from tl_spec.prompts import E06_TEXTS, STANDARD_10
from tl_spec.stats import LinearFit
from tl_spec.tokens import plan_batches, tokenize

BACKENDS = list(LOADABLE)


# ------------------------------------------------------------------ hook points


def test_resolve_layers():
    assert resolve_layers("early", 32) == list(range(0, 11))
    assert resolve_layers("middle", 32) == list(range(11, 21))
    assert resolve_layers("late", 32) == list(range(21, 32))
    assert resolve_layers("all", 3) == [0, 1, 2] and resolve_layers((1, 3), 3) == [1, 2]
    for bad in ("upper", (0, 40), [3], (2, 2)):
        with pytest.raises(TLSpecError):
            resolve_layers(bad, 3)


@pytest.mark.parametrize("arch", ["llama-gqa", "gpt2", "qwen2"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_attn_out_site_is_hf_self_attn_output(tl_model, hf_model, arch, backend):
    """The same fixed noise tensor added by our hook and by an HF forward hook on self_attn."""
    model, hf = tl_model(arch, backend), hf_model(arch)
    tokens = model.to_tokens(STANDARD_10[1])
    hooks = noise(model, sigma=0.3, layers=[1, 2], seed=42).bind(tokens)
    fixed = {x: hooks.apply(x, torch.zeros(1, tokens.shape[1], model.cfg.d_model))
             for x in hooks.layers}
    layers = hf.model.layers if hasattr(hf, "model") else hf.transformer.h
    handles = []
    for x, t in fixed.items():
        attn = layers[x].self_attn if hasattr(layers[x], "self_attn") else layers[x].attn
        handles.append(attn.register_forward_hook(lambda m, i, o, t=t: (o[0] + t, *o[1:])))
    try:
        with torch.no_grad():
            ours = model.run_with_hooks(tokens, fwd_hooks=hooks.fwd_hooks)
            theirs = hf(tokens).logits
            clean = model(tokens)
    finally:
        for h in handles:
            h.remove()
    assert (ours - theirs).abs().max().item() < 1e-5
    assert (ours - clean).abs().max().item() > 0.1  # the noise really acts


def test_noise_is_a_pure_function_of_seed_prompt_layer_site(tl_model):
    model = tl_model("llama-gqa", "bridge")
    a, b = model.to_tokens(STANDARD_10[0])[0], model.to_tokens(STANDARD_10[2])[0]
    batch = torch.zeros(2, max(len(a), len(b)), dtype=torch.long)
    mask = torch.zeros_like(batch)
    batch[0, -len(a):], mask[0, -len(a):] = a, 1  # left-padded
    batch[1, : len(b)], mask[1, : len(b)] = b, 1  # right-padded
    hooks = noise(model, sigma=1.0, layers=[0], seed=7)
    x = torch.zeros(2, batch.shape[1], model.cfg.d_model)
    together = hooks.bind(batch, mask).apply(0, x)
    alone = hooks.bind(b[None]).apply(0, torch.zeros(1, len(b), model.cfg.d_model))
    assert torch.equal(together[1, : len(b)], alone[0])
    assert torch.equal(together[0, : batch.shape[1] - len(a)], torch.zeros_like(
        together[0, : batch.shape[1] - len(a)]))  # no noise on padding
    state = torch.get_rng_state()
    again = hooks.bind(batch, mask).apply(0, x)
    assert torch.equal(together, again) and torch.equal(state, torch.get_rng_state())
    other_seed = hooks.bind(batch, mask, seeds=[8, 8]).apply(0, x)
    assert not torch.equal(together, other_seed)
    other_layer = noise(model, sigma=1.0, layers=[1], seed=7).bind(batch, mask).apply(1, x)
    assert not torch.equal(together, other_layer)


@pytest.mark.parametrize("site", ["attn_out", "z", "pattern"])
def test_shared_draws_give_the_same_noise(tl_model, site):
    """NoiseDraws (what a sweep shares between sigmas) changes no value: sigma times the same
    draw, hooks with and without the store equal bit for bit; the store is bounded."""
    from tl_spec.hooks.noising import NoiseDraws

    model = tl_model("llama-gqa", "bridge")
    a, b = model.to_tokens(STANDARD_10[0])[0], model.to_tokens(STANDARD_10[2])[0]
    batch = torch.zeros(2, max(len(a), len(b)), dtype=torch.long)
    mask = torch.zeros_like(batch)
    batch[0, -len(a):], mask[0, -len(a):] = a, 1
    batch[1, : len(b)], mask[1, : len(b)] = b, 1
    shape = {"attn_out": (model.cfg.d_model,), "z": (model.cfg.n_heads, model.cfg.d_head),
             "pattern": (model.cfg.n_heads, batch.shape[1])}[site]
    if site == "pattern":
        x = torch.softmax(torch.randn(2, shape[0], batch.shape[1], shape[1]), -1)
    else:
        x = torch.zeros(2, batch.shape[1], *shape)
    draws = NoiseDraws()
    for sigma in (0.05, 0.2, 0.05):
        shared = noise(model, sigma=sigma, layers=[0, 1], site=site, seed=3)
        shared.draws = draws
        fresh = noise(model, sigma=sigma, layers=[0, 1], site=site, seed=3)
        for layer in (0, 1):
            got = shared.bind(batch, mask, seeds=[3, 4]).apply(layer, x)
            want = fresh.bind(batch, mask, seeds=[3, 4]).apply(layer, x)
            assert torch.equal(got, want) and not torch.equal(got, x)
    assert draws.hits == 2 * 2 * 2  # the 2nd and 3rd sigma reuse 2 rows x 2 layers
    small = NoiseDraws(max_bytes=draws.nbytes // 2)
    hooks = noise(model, sigma=0.1, layers=[0, 1], site=site, seed=3)
    hooks.draws = small
    for layer in (0, 1):
        hooks.bind(batch, mask).apply(layer, x)
    assert 0 < small.nbytes <= small.max_bytes


def test_z_site_heads_and_kv_group(tl_model):
    model = tl_model("llama-gqa", "bridge")  # 8 query heads, 2 KV groups
    tokens = model.to_tokens("The cat sat on the mat")
    z = torch.zeros(1, tokens.shape[1], 8, model.cfg.d_head)
    out = noise(model, sigma=1.0, site="z", kv_group=1).bind(tokens).apply(0, z)
    assert torch.all(out[:, :, :4] == 0) and torch.all(out[:, :, 4:] != 0)
    out = noise(model, sigma=1.0, site="z", heads=[2]).bind(tokens).apply(0, z)
    assert torch.all(out[:, :, [0, 1, 3, 4, 5, 6, 7]] == 0) and torch.all(out[:, :, 2] != 0)


def test_pattern_site_stays_a_distribution_over_allowed_keys(tl_model):
    model = tl_model("mistral-swa", "bridge")  # window 8
    tokens = model.to_tokens(STANDARD_10[5])
    hooks = noise(model, sigma=0.05, site="pattern", layers=[1]).bind(tokens)
    stats = {}
    grab = ("blocks.1.attn.hook_pattern", lambda x, hook: stats.__setitem__("p", x.clone()))
    model.run_with_hooks(tokens, return_type=None, fwd_hooks=[*hooks.fwd_hooks, grab])
    p = stats["p"][0]
    n = p.shape[-1]
    q, k = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    outside = (k > q) | (q - k >= 8)
    assert torch.allclose(p.sum(-1), torch.ones(8, n), atol=1e-5)
    assert torch.all(p[:, outside] == 0) and torch.all(p >= 0)


def test_relative_noise_scales_with_rms(tl_model):
    model = tl_model("gpt2", "bridge")
    tokens = model.to_tokens("The cat sat on the mat")
    x = torch.zeros(1, tokens.shape[1], model.cfg.d_model)
    plain = noise(model, sigma=0.1, layers=[0], seed=1).bind(tokens).apply(0, x)
    rel = noise(model, sigma=0.1, layers=[0], seed=1, relative=True).calibrate({0: 3.0})
    assert torch.allclose(rel.bind(tokens).apply(0, x), 3.0 * plain)
    with pytest.raises(TLSpecError, match="calibrate"):
        noise(model, sigma=0.1, layers=[0], relative=True).bind(tokens).apply(0, x)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"sigma": -0.1}, "sigma must be a finite number >= 0"),
        ({"sigma": float("nan")}, "sigma must be a finite number >= 0"),
        ({"sigma": 0.1, "layers": (0, 9)}, "out of range"),
        ({"sigma": 0.1, "layers": [5]}, "out of range"),
        ({"sigma": 0.1, "heads": [0]}, "has no heads"),
        ({"sigma": 0.1, "site": "mlp_out"}, "unknown noise site"),
        ({"sigma": 0.1, "site": "z", "heads": [9]}, "heads must lie in"),
    ],
)
def test_noise_bad_input(tl_model, kwargs, message):
    with pytest.raises(TLSpecError, match=message):
        noise(tl_model("llama-gqa", "bridge"), **kwargs)


def test_unbound_hooks_refuse_and_are_removed(tl_model):
    model = tl_model("llama-gqa", "bridge")
    hooks = noise(model, sigma=0.1)
    with pytest.raises(TLSpecError, match="not bound"):
        model.run_with_hooks(model.to_tokens("hello there"), fwd_hooks=hooks.fwd_hooks)
    unique = {id(h): h for h in model.hook_dict.values()}
    assert sum(len(h.fwd_hooks) for h in unique.values()) == 0


# ------------------------------------------------------------------ probe and sweep


@pytest.fixture(scope="module")
def gqa_hooked(tiny_checkpoints):
    backend = "hooked" if HAS_HOOKED else "bridge"
    return tl_spec.load_model(tiny_checkpoints["llama-gqa"], backend=backend)


def test_probe_sigma_zero_is_exactly_clean(gqa_hooked):
    probe = tl_spec.perturbation_probe(gqa_hooked, STANDARD_10, sigma=0.0, n_resamples=200)
    clean = tl_spec.specialization_index(gqa_hooked, STANDARD_10)
    assert probe.si_clean == clean.value
    assert np.all(probe.si_noised == clean.value) and probe.response_pct == 0.0
    assert probe.verdict == "stable (healthy)"


def test_probe_is_deterministic_and_seeds_act(gqa_hooked):
    a = tl_spec.perturbation_probe(gqa_hooked, STANDARD_10, sigma=0.05, n_resamples=500)
    b = tl_spec.perturbation_probe(gqa_hooked, STANDARD_10, sigma=0.05, n_resamples=500)
    assert np.array_equal(a.si_noised, b.si_noised) and a.interval == b.interval
    assert len(set(a.si_noised.tolist())) == 3  # different seeds differ
    assert a.response_pct == pytest.approx(
        (a.si_noised.mean() - a.si_clean) / a.si_clean * 100, abs=1e-9)
    assert a.interval.low <= a.response_pct <= a.interval.high


@pytest.mark.parametrize("backend", BACKENDS)
def test_probe_independent_of_batching_and_padding(tl_model, backend):
    model = tl_model("gpt2", backend)
    ref = tl_spec.perturbation_probe(model, STANDARD_10, sigma=0.1, n_resamples=200,
                                     batch_size=10)
    one = tl_spec.perturbation_probe(model, STANDARD_10, sigma=0.1, n_resamples=200,
                                     batch_size=1)
    np.testing.assert_allclose(one.si_noised, ref.si_noised, rtol=0, atol=1e-6)
    assert one.si_clean == pytest.approx(ref.si_clean, abs=1e-6)


@pytest.mark.parametrize("arch", ["llama-gqa", "gpt2"])
def test_fast_sweep_equals_plain_path(tl_model, arch):
    """Prefix reuse, batched seeds and the clean run once vs every condition from scratch."""
    backend = "hooked" if HAS_HOOKED else "bridge"
    model = tl_model(arch, backend)
    tok = tokenize(model, STANDARD_10, max_length=128)
    conds = [NoiseCondition(tuple(resolve_layers(r, 3)), s, seed, site=site, label=str(r))
             for site in ("attn_out", "pattern")
             for r in ("early", "middle", "late", "all", (0, 2)) for s in (0.0, 0.05, 0.2)
             for seed in (42, 123)]
    kw = dict(stats=("correlation", "column_entropy", "row_entropy"), loss=True)
    fast = run_sweep(model, tok, conds, fast=True, **kw)
    plain = run_sweep(model, tok, conds, fast=False, batch_size=3, padding_side="left", **kw)
    one_pass = len(plan_batches(tok.lengths, batch_size=16))  # the clean run happens once
    assert fast.forwards["clean"] == one_pass and fast.forwards["noised"] < plain.forwards["noised"]
    for a, b in zip(fast.noised, plain.noised):
        for key in a:
            np.testing.assert_allclose(a[key], b[key], rtol=0, atol=1e-6, err_msg=key)
    changed = [not np.allclose(r["nll_sum"], fast.clean["nll_sum"]) for r in fast.noised]
    assert changed == [c.sigma > 0 for c in conds]


def test_probe_sweep_table(gqa_hooked):
    sweep = tl_spec.probe_sweep(gqa_hooked, STANDARD_10, sigmas=(0, 0.05, 0.2),
                                seeds=(42, 123), target_si=1.0)
    frame = sweep.to_frame()
    assert len(frame) == 4 * 3 * 2
    zero = frame[frame.sigma == 0]
    assert np.all(zero.si == sweep.si_clean) and np.all(zero.change_pct == 0)
    # noise in the last layer's attention output cannot change any pattern of a 3-layer model
    assert np.all(frame[frame.region == "late"].si == sweep.si_clean)
    assert frame[(frame.region == "all") & (frame.sigma == 0.2)].change_pct.abs().min() > 1
    row = frame.iloc[-1]
    assert row.recovery == pytest.approx((row.si - sweep.si_clean) / (1.0 - sweep.si_clean))


# ------------------------------------------------------------------ sensitivity


@pytest.fixture(scope="module")
def sensitivity(gqa_hooked):
    return tl_spec.noise_sensitivity(gqa_hooked, E06_TEXTS)


def test_perplexity_rises_with_sigma(sensitivity, gqa_hooked):
    s = sensitivity
    assert s.slope > 0 and s.log_slope > 0
    assert all(0 <= f.r2 <= 1 for f in s.fits)
    assert np.all(s.ppl[0] == s.ppl[0, 0])  # sigma = 0: every seed gives the clean perplexity
    tok = tokenize(gqa_hooked, E06_TEXTS, max_length=128)
    with torch.inference_mode():
        losses = [gqa_hooked(torch.tensor([ids]), return_type="loss").item() for ids in tok.ids]
    np.testing.assert_allclose(s.ppl[0, 0], np.exp(losses), rtol=1e-5)


def test_sensitivity_independent_of_batching_and_padding(gqa_hooked, sensitivity):
    other = tl_spec.noise_sensitivity(gqa_hooked, E06_TEXTS, batch_size=1)
    np.testing.assert_allclose(other.ppl, sensitivity.ppl, rtol=1e-6)


def _fake(slopes, seeds=(42, 123, 456)):
    fits = [LinearFit(s, 0.0, 1.0, 0.0, 0.0) for s in slopes]
    return SensitivityResult(sigmas=[0.0, 0.1, 0.2], seeds=list(seeds), layers=[0], site="attn_out",
                             ppl=np.zeros((3, 3, 1)), fits=fits, log_fits=fits,
                             slope=float(np.mean(slopes)), log_slope=0.0, min_r2=0.5, warnings=[],
                             settings={}, provenance={"versions": {}, "timestamp": "", "model": "x"})


def test_compare_sensitivity_reproduces_appendix_b():
    c = compare_sensitivity(_fake([16.73, 156.96, 46.35]), _fake([451_342, 391_573, 440_977]))
    assert c.ratio_of_means == pytest.approx(5834.8, abs=0.5)   # paper: 5,834x
    assert c.median_of_ratios == pytest.approx(9514.1, abs=0.5)  # paper: 9,515x
    assert c.mean_of_ratios == pytest.approx(12995.6, abs=0.5)   # paper: ~13,000x
    assert c.pvalue == pytest.approx(0.1)  # 3 vs 3 seeds: the smallest two-sided p possible


def test_sensitivity_bad_input(gqa_hooked):
    with pytest.raises(TLSpecError, match="at least 3 distinct sigmas"):
        tl_spec.noise_sensitivity(gqa_hooked, E06_TEXTS, sigmas=(0, 0.1))
    with pytest.raises(TLSpecError, match="finite number"):
        tl_spec.noise_sensitivity(gqa_hooked, E06_TEXTS, sigmas=(0, 0.1, -1))
    with pytest.raises(TLSpecError, match="unknown noise site"):
        tl_spec.noise_sensitivity(gqa_hooked, E06_TEXTS, site="mlp")
    with pytest.raises(TLSpecError, match="out of range"):
        tl_spec.perturbation_probe(gqa_hooked, STANDARD_10, layers=(0, 7))


def test_results_round_trip(gqa_hooked, sensitivity, tmp_path):
    probe = tl_spec.perturbation_probe(gqa_hooked, STANDARD_10, sigma=0.05, n_resamples=200)
    for obj in (probe, sensitivity):
        path = tmp_path / f"{obj.kind}.json"
        obj.to_json(path)
        back = tl_spec.load_result(path)
        assert type(back) is type(obj)
    assert tl_spec.load_result(tmp_path / "noise_sensitivity.json").fits == sensitivity.fits


def test_cli_probe_and_sensitivity(tiny_checkpoints, tmp_path, capsys):
    path = str(tiny_checkpoints["llama-gqa"])
    out = tmp_path / "probe.json"
    assert main(["probe", path, "--sigma", "0.05", "--seeds", "42,123", "--layers", "early",
                 "--json", str(out)]) == 0
    assert "verdict:" in capsys.readouterr().out
    assert json.loads(out.read_text())["layers"] == [0]
    assert main(["probe", path, "--sweep", "--sigmas", "0,0.1,0.2", "--seeds", "42",
                 "--json", str(tmp_path / "sweep.json")]) == 0
    assert json.loads((tmp_path / "sweep.json").read_text())["kind"] == "probe_sweep"
    assert main(["sensitivity", path, str(tiny_checkpoints["llama-mha"]), "--seeds", "42,123,456",
                 "--json", str(tmp_path / "sens.json")]) == 0
    printed = capsys.readouterr().out
    assert "ratio of means" in printed and "log-PPL slope" in printed
    bad = tmp_path / "bad.json"
    assert main(["probe", path, "--sigma", "-1", "--json", str(bad)]) == 2
    assert main(["probe", path, "--site", "mlp", "--json", str(bad)]) == 2
    assert not bad.exists()
