"""Batching and padding do not change the Specialization Index.

One ragged batch of all Standard-10 prompts (``batch_size=10``), padded left or right, must equal
one prompt at a time (``batch_size=1``) to 1e-6 for every method, region and aggregate, on a
rotary model (llama-gqa) and an absolute-position model (gpt2), with both backends.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import BACKENDS, COMBOS, combo_id, si_kwargs

ATOL = 1e-6
FIELDS = ("per_layer", "per_head", "head_correlation", "entropies", "per_prompt")


@pytest.mark.parametrize("combo", COMBOS, ids=combo_id)
@pytest.mark.parametrize("padding_side", ["left", "right"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("arch", ["llama-gqa", "gpt2"])
def test_one_batch_equals_one_at_a_time(arch, backend, padding_side, combo, si_result):
    kw = si_kwargs(*combo)
    single = si_result(arch, backend, batch_size=1, **kw)
    batched = si_result(arch, backend, batch_size=10, padding_side=padding_side, **kw)
    lengths = {len(t) for t in batched.tokens}
    assert len(lengths) > 1, "prompts should be ragged so that padding happens"
    assert [list(map(int, t)) for t in batched.tokens] == [list(map(int, t)) for t in single.tokens]
    assert abs(float(batched.value) - float(single.value)) <= ATOL, (
        f"value batched {float(batched.value)!r} vs single {float(single.value)!r}"
    )
    for name in FIELDS:
        a, b = getattr(batched, name), getattr(single, name)
        assert (a is None) == (b is None), name
        if a is not None:
            a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
            assert a.shape == b.shape, name
            np.testing.assert_allclose(a, b, rtol=0, atol=ATOL, err_msg=name)
    assert batched.undefined_heads == single.undefined_heads
