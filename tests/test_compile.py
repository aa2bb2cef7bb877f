"""The training forwards trace whole: no graph break, no host sync (``torch.compile(fullgraph=True)``).

BLT.forward with patch lengths given, the entropy model's and the BPE baseline's forwards. Value checks of
the inputs run on the host (CPU tensors) or when asked (``check=True``), never inside a compiled graph.
The fullgraph comparison uses the ``aot_eager`` backend (dynamo + AOT autograd, no inductor code
generation): it traces exactly what inductor would get, in seconds instead of minutes on a small CPU.
"""

import pytest
import torch
import torch.nn.functional as F
from tiny_blt import random_ids, tiny_blt

from blt.attention import attention_mask
from blt.attention_cuda import xformers_bias
from blt.baseline import BaselineLM, train_tokenizer
from blt.config import BaselineConfig, PatchingConfig
from blt.patcher import patch_lengths
from blt.validation import checks_values


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def graph_breaks(fn, *args, **kwargs) -> list[str]:
    explained = torch._dynamo.explain(fn)(*args, **kwargs)
    return [str(b.reason).splitlines()[0] for b in explained.break_reasons]


def static_lengths(ids: torch.Tensor, patch_size: int = 4) -> torch.Tensor:
    return patch_lengths(ids, PatchingConfig(scheme="static", patch_size=patch_size))


@pytest.mark.parametrize("training", [True, False])
def test_blt_forward_with_patch_lengths_has_no_graph_break(training):
    model = tiny_blt().train(training)
    ids = random_ids(2, 40)
    lengths, next_starts = model.compute_patches(ids)  # entropy patching: rows of different patch counts
    assert graph_breaks(model, ids, lengths) == []
    assert graph_breaks(model, ids, lengths, next_starts, check=False) == []


def test_entropy_model_forward_has_no_graph_break():
    patcher = tiny_blt().patcher
    ids = random_ids(2, 40)
    assert graph_breaks(patcher, ids) == []
    assert graph_breaks(patcher.train(), ids) == []


def test_baseline_forward_has_no_graph_break():
    tokenizer = train_tokenizer(["def f(x):\n    return x + 1\n" * 40], vocab_size=300)
    model = BaselineLM(BaselineConfig(dim=32, n_layers=1, n_heads=2, vocab_size=300), tokenizer)
    ids = torch.tensor([model.encode("def f(y):\n    return y")])
    assert graph_breaks(model, ids) == []


def test_fullgraph_compile_equals_eager_forward_and_backward():
    eager = tiny_blt().train()
    compiled = tiny_blt().train()
    compiled.load_state_dict(eager.state_dict())
    step = torch.compile(compiled, fullgraph=True, backend="aot_eager")
    ids = random_ids(2, 40)
    lengths, next_starts = eager.compute_patches(ids)
    want, got = eager(ids, lengths, next_starts), step(ids, lengths, next_starts, check=False)
    torch.testing.assert_close(got.logits, want.logits, rtol=1e-5, atol=1e-5)
    assert torch.equal(got.patch_lengths, want.patch_lengths)
    for out in (want, got):
        F.cross_entropy(out.logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten()).backward()
    for (name, a), b in zip(eager.named_parameters(), compiled.parameters()):
        if a.requires_grad:
            torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_fullgraph_holds_when_lengths_and_patch_counts_change():
    """Training batches differ in patch count: dynamo recompiles with a symbolic P, still one graph (the
    ``eager`` backend: graph breaks are dynamo's decision, the backend only runs the graph)."""
    model = tiny_blt()
    step = torch.compile(model, fullgraph=True, backend="eager")
    with torch.no_grad():
        for length, patch_size in ((40, 4), (33, 3), (24, 5)):
            ids = random_ids(2, length, seed=length)
            lengths = static_lengths(ids, patch_size)
            torch.testing.assert_close(step(ids, lengths).logits, model(ids, lengths).logits)


def test_given_patching_equals_computed_patching():
    """What the training step runs (patches computed first, then the forward) is the model's own patching."""
    model = tiny_blt()
    ids = random_ids(2, 40)
    lengths, next_starts = model.compute_patches(ids)
    own = model(ids)
    given = model(ids, lengths, next_starts, check=False)
    assert torch.equal(given.logits, own.logits) and torch.equal(given.patch_lengths, own.patch_lengths)


def test_values_are_checked_on_the_host_or_when_asked():
    cpu, meta = torch.zeros(2), torch.zeros(2, device="meta")  # meta: a device tensor reading nothing back
    assert checks_values(None, cpu) and not checks_values(None, cpu, meta)
    assert checks_values(True, meta) and not checks_values(False, cpu)


@pytest.mark.parametrize("check", [None, True])
def test_value_checks_keep_their_errors(check):
    model = tiny_blt()
    ids = random_ids(2, 6)
    with pytest.raises(ValueError, match="id 260 at flat position 2 is outside the byte vocabulary"):
        model(torch.tensor([[1, 5, 260]]), check=check)
    cases = [
        (torch.tensor([[1, 2, 2], [1, 5, 0]]), "row 0 sums to 5"),
        (torch.tensor([[1, 6, -1], [1, 5, 0]]), r"patch_lengths\[0, 2\] = -1 is negative"),
        (torch.tensor([[1, 0, 5], [1, 5, 0]]), "empty patch before a non-empty one"),
    ]
    for lengths, message in cases:
        with pytest.raises(ValueError, match=message):
            model(ids, lengths, check=check)


def test_check_false_skips_values_but_not_shapes():
    model = tiny_blt()
    ids = random_ids(2, 6)
    model(ids, torch.tensor([[1, 2, 2], [1, 5, 0]]), check=False)  # wrong sum, not read
    with pytest.raises(ValueError, match="1 rows but ids has 2"):
        model(ids, torch.tensor([[1, 5]]), check=False)
    with pytest.raises(ValueError, match="integer"):
        model(ids, torch.ones(2, 2), check=False)
    with pytest.raises(
        ValueError, match=r"next_starts must be a bool tensor of shape \[2\], got torch.bool \(3,\)"
    ):
        model(ids, static_lengths(ids), torch.zeros(3, dtype=torch.bool))
    with pytest.raises(
        ValueError, match=r"next_starts must be a bool tensor of shape \[2\], got torch.int64"
    ):
        model(ids, static_lengths(ids), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"next_starts must be a bool tensor of shape \[2\], got list"):
        model(ids, static_lengths(ids), [True, False])
    with pytest.raises(ValueError, match="next_starts needs patch_lengths"):
        model(ids, next_starts=torch.zeros(2, dtype=torch.bool))


@pytest.mark.parametrize("window", [None, 3])
def test_xformers_self_attention_mask_reads_no_positions(window):
    pytest.importorskip("xformers.ops")
    meta = torch.arange(7, device="meta")  # reading a value back would fail: the mask comes from shapes
    bias, flatten = xformers_bias(meta, meta, window, None, None, 2)
    assert not flatten and not isinstance(bias, torch.Tensor)
    positions = torch.arange(7)
    bias, _ = xformers_bias(positions, positions, window, None, None, 2)
    assert torch.equal(bias.materialize((7, 7)) == 0, attention_mask(positions, positions, window)[0, 0])
