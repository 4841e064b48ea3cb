"""Tests of tl_spec.zoo.align: the DPO formula, sequence log-probs, the data rules, and training.

Unit tests check ``dpo_loss`` against plain ``math`` and ``sequence_logps`` against a manual
log-softmax gather; integration tests run SFT then DPO for 20 steps on a tiny random-init Llama
(built once per module) and check learning, bitwise reproducibility and loading through tl_spec.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from tl_spec.errors import TLSpecError
from tl_spec.zoo.align import (
    PREFERENCE_RULE,
    Example,
    dpo_loss,
    instruction_examples,
    preference_pairs,
    sequence_logps,
    train_dpo,
    train_sft,
)

STEPS = 20


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny matrices: more threads only add contention on a shared machine (bitwise checks
    compare runs at one thread count)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _hand_dpo(pc: float, pr: float, rc: float, rr: float, beta: float) -> float:
    z = beta * ((pc - rc) - (pr - rr))
    return -math.log(1.0 / (1.0 + math.exp(-z)))


# ---------------------------------------------------------------- dpo_loss (unit)

CASES = [
    (-1.0, -2.5, -1.2, -2.0, 0.1),
    (-10.0, -3.0, -9.0, -4.0, 0.5),
    (-0.3, -0.3, -7.0, -1.0, 2.0),
]


def test_dpo_loss_matches_hand_formula():
    for beta in (0.1, 0.5, 2.0):
        pc, pr, rc, rr = (torch.tensor([c[i] for c in CASES], dtype=torch.float64)
                          for i in range(4))
        loss, chosen_r, rejected_r = dpo_loss(pc, pr, rc, rr, beta=beta)
        want = sum(_hand_dpo(c[0], c[1], c[2], c[3], beta) for c in CASES) / len(CASES)
        assert abs(loss.item() - want) < 1e-7
        for i, c in enumerate(CASES):
            assert abs(chosen_r[i].item() - beta * (c[0] - c[2])) < 1e-7
            assert abs(rejected_r[i].item() - beta * (c[1] - c[3])) < 1e-7


def test_dpo_loss_single_pair_and_gradient_sign():
    pc = torch.tensor([-1.0], dtype=torch.float64, requires_grad=True)
    pr = torch.tensor([-2.5], dtype=torch.float64, requires_grad=True)
    loss, _, _ = dpo_loss(pc, pr, torch.tensor([-1.2], dtype=torch.float64),
                          torch.tensor([-2.0], dtype=torch.float64), beta=0.1)
    assert abs(loss.item() - _hand_dpo(-1.0, -2.5, -1.2, -2.0, 0.1)) < 1e-7
    loss.backward()
    assert pc.grad.item() < 0 < pr.grad.item()  # raising pi_c (or lowering pi_r) lowers the loss
    higher = dpo_loss(pc.detach() + 0.5, pr.detach(), torch.tensor([-1.2], dtype=torch.float64),
                      torch.tensor([-2.0], dtype=torch.float64), beta=0.1)[0]
    assert higher.item() < loss.item()


def test_dpo_loss_is_log2_when_policy_is_reference():
    x = torch.tensor([-3.0, -0.5, -12.0])
    y = torch.tensor([-1.0, -4.0, -2.0])
    loss, chosen_r, rejected_r = dpo_loss(x, y, x.clone(), y.clone(), beta=0.3)
    assert abs(loss.item() - math.log(2.0)) < 1e-7
    assert torch.equal(chosen_r, torch.zeros(3)) and torch.equal(rejected_r, torch.zeros(3))


def test_dpo_loss_rejects_mismatched_shapes():
    with pytest.raises(TLSpecError, match="shape"):
        dpo_loss(torch.zeros(2), torch.zeros(3), torch.zeros(2), torch.zeros(2))


# ---------------------------------------------------------------- data rules (unit)


@pytest.fixture(scope="module")
def documents():
    from tl_spec.corpus import load_corpus

    return load_corpus().train[:200]


def test_instruction_examples_rule_and_determinism(documents):
    a = instruction_examples(documents, n=64, seed=0)
    assert a == instruction_examples(documents, n=64, seed=0)
    assert a != instruction_examples(documents, n=64, seed=1)
    assert len(a) == 64 and len({e.source_id for e in a}) == 64
    by_id = {d.id: d for d in documents}
    for e in a:
        title = by_id[e.source_id].title
        assert e.prompt == f"### Instruction:\nExplain {title}.\n\n### Response:\n"
        assert 80 <= len(e.response) <= 400 and e.response == e.response.strip()
        assert "\n" not in e.response
    all_examples = instruction_examples(documents)
    assert sorted(x.source_id for x in all_examples) == sorted(
        x.source_id for x in instruction_examples(documents, seed=5))


def test_instruction_examples_skip_short_and_trim_at_sentence():
    from tl_spec.corpus import Document

    short = Document("doc:a", "a", "Too short.\n\n    code block that is long enough " * 5)
    long = Document("doc:b", "b", "Heading\n=======\n\n" + "One sentence here. " * 40)
    out = instruction_examples([short, long])
    assert [e.source_id for e in out] == ["doc:b"]
    assert out[0].response.endswith("here.") and len(out[0].response) <= 400
    assert len(out[0].response) > 400 - len("One sentence here. ")


def test_preference_pairs_rule_and_determinism(documents):
    examples = instruction_examples(documents, n=64, seed=0)
    a = preference_pairs(examples, seed=0)
    assert a == preference_pairs(examples, seed=0)
    assert a != preference_pairs(examples, seed=1)
    responses = {e.response for e in examples}
    for ex, pair in zip(examples, a, strict=True):
        assert pair.prompt == ex.prompt and pair.chosen == ex.response
        assert pair.rejected != pair.chosen and pair.rejected in responses
        assert pair.rule == PREFERENCE_RULE
    with pytest.raises(TLSpecError, match="distinct"):
        preference_pairs([Example("p", "same", "x"), Example("q", "same", "y")])


# ---------------------------------------------------------------- models (integration)


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tl_spec.zoo.tiny import build_random_checkpoint

    return build_random_checkpoint(tmp_path_factory.mktemp("align") / "base", arch="llama-gqa")


@pytest.fixture(scope="module")
def hf_base(base_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(base_dir)


def test_sequence_logps_matches_unpadded_manual_gather(hf_base):
    model, tok = hf_base
    prompts = ["### Instruction:\nExplain x.\n\n### Response:\n", "Q: what?\n", "The capital"]
    responses = ["A fairly long answer about many things in detail.", "No.", " of France is Paris"]
    with torch.no_grad():
        batched = sequence_logps(model, tok, prompts, responses)
        for i, (p, r) in enumerate(zip(prompts, responses, strict=True)):
            p_ids = tok(p).input_ids
            assert p_ids[0] == tok.bos_token_id
            r_ids = tok(r, add_special_tokens=False).input_ids + [tok.eos_token_id]
            ids = torch.tensor([p_ids + r_ids])
            logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), dim=-1)
            want = sum(logp[len(p_ids) - 1 + k, t].item() for k, t in enumerate(r_ids))
            assert abs(batched[i].item() - want) < 1e-5
            single = sequence_logps(model, tok, [p], [r])
            assert abs(single.item() - batched[i].item()) < 1e-5
    assert batched.shape == (3,)


def test_sequence_logps_excludes_prompt_tokens(hf_base):
    model, tok = hf_base
    prompt, response = "What is the capital of France?\n", "Paris is the capital."
    with torch.no_grad():
        got = sequence_logps(model, tok, [prompt], [response]).item()
        p_ids = tok(prompt).input_ids
        ids = p_ids + tok(response, add_special_tokens=False).input_ids + [tok.eos_token_id]
        logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0], -1)
        per_token = [logp[t - 1, ids[t]].item() for t in range(1, len(ids))]
        prompt_part = sum(per_token[: len(p_ids) - 1])  # the prompt's own tokens after BOS
        one = sequence_logps(model, tok, [prompt], [""]).item()  # EOS alone: exactly one term
    assert abs(got - (sum(per_token) - prompt_part)) < 1e-5
    assert abs(prompt_part) > 1.0  # so including it would have shown
    with torch.no_grad():
        eos_ids = torch.tensor([p_ids + [tok.eos_token_id]])
        eos_only = torch.log_softmax(model(input_ids=eos_ids).logits[0, -2], -1)
    assert abs(one - eos_only[tok.eos_token_id].item()) < 1e-5
    with pytest.raises(TLSpecError, match="max_length"):
        sequence_logps(model, tok, ["long prompt " * 50], ["x"], max_length=16)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(Path(path) / "model.safetensors")


def _identical(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def tuned(base_dir, documents, tmp_path_factory):
    """SFT (seeds 0, 0, 1) on the base, then DPO (seeds 0, 0, 1) on the seed-0 SFT model."""
    root = tmp_path_factory.mktemp("tuned")
    examples = instruction_examples(documents, n=64, seed=0)
    pairs = preference_pairs(examples, seed=0)
    out: dict = {"root": root}
    for name, seed in (("sft0", 0), ("sft0b", 0), ("sft1", 1)):
        out[name] = train_sft(base_dir, root / name, examples, seed=seed, steps=STEPS,
                              eval_examples=examples, progress=False)
    for name, seed in (("dpo0", 0), ("dpo0b", 0), ("dpo1", 1)):
        out[name] = train_dpo(root / "sft0", root / name, pairs, seed=seed, steps=STEPS,
                              progress=False)
    return out


def test_sft_lowers_response_nll(tuned):
    m = tuned["sft0"]
    assert len(m["losses"]) == STEPS
    assert m["eval_nll_after"] < m["eval_nll_before"] - 0.2  # nats per token, 20 steps
    assert m["loss_final"] < m["losses"][0]


def test_dpo_prefers_chosen(tuned):
    m = tuned["dpo0"]
    assert abs(m["losses"][0] - math.log(2.0)) < 1e-6  # policy == reference at step 0
    assert m["accuracy"] > 0.5 and m["reward_margin"] > 0.0
    assert m["loss_final"] < math.log(2.0)


def test_training_is_bitwise_reproducible_per_seed(tuned):
    root = tuned["root"]
    for a, b, c in (("sft0", "sft0b", "sft1"), ("dpo0", "dpo0b", "dpo1")):
        assert _identical(_weights(root / a), _weights(root / b)), a
        assert not _identical(_weights(root / a), _weights(root / c)), a
        assert tuned[a]["losses"] == tuned[b]["losses"]


def test_training_leaves_global_rng_untouched(base_dir, documents, tmp_path):
    examples = instruction_examples(documents, n=8, seed=0)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    train_sft(base_dir, tmp_path / "s", examples, seed=3, steps=1, batch_size=4, progress=False)
    assert torch.equal(torch.get_rng_state(), before)
    assert not torch.are_deterministic_algorithms_enabled()


def test_outputs_load_with_tl_spec(tuned):
    import json

    import tl_spec

    for name in ("sft0", "dpo0"):
        path = tuned["root"] / name
        model = tl_spec.load_model(path, backend="bridge")
        assert model.cfg.n_layers == 3 and model.cfg.n_heads == 8
        record = json.loads((path / "tl_spec_align.json").read_text())
        assert record["settings"]["method"] == name[:3]
    assert record["settings"]["rules"] == [PREFERENCE_RULE]
