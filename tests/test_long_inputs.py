"""Long inputs: the entropy model keeps its sliding window (512 bytes for the released one), so entropies past the
window equal those of an explicit sliding-window reference and patches do not drift with the input's length."""

from __future__ import annotations

import json
import random

import pytest
import torch
import torch.nn.functional as F
from tiny_blt import tiny_blt

from blt.config import EntropyModelConfig, PatchingConfig
from blt.model import BLT
from blt.patcher import EntropyModel, patch_lengths
from blt.patcher.window import with_entropy_window
from blt.tokenizer import encode


def reference_entropies(model: EntropyModel, ids: torch.Tensor, window: int | None) -> torch.Tensor:
    """Next-byte entropies of ``model`` on ids [1, T], computed from its weights alone with the causal
    sliding-window mask (query i sees keys j with i - window < j <= i) applied over the whole sequence."""
    c, w = model.config, model.state_dict()
    T, H, D = ids.shape[1], c.n_heads, c.dim // c.n_heads
    pos = torch.arange(T)
    mask = pos[None, :] <= pos[:, None]
    if window is not None:
        mask &= pos[:, None] - pos[None, :] < window
    angle = pos[:, None].float() * c.rope_theta ** (-torch.arange(0, D, 2).float() / D)  # [T, D/2]

    def rope(x):  # interleaved pairs (2i, 2i + 1) rotate together
        even, odd = x[..., 0::2], x[..., 1::2]
        return torch.stack(
            (even * angle.cos() - odd * angle.sin(), odd * angle.cos() + even * angle.sin()), -1
        ).flatten(-2)

    def norm(x, weight):
        return weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + c.norm_eps)

    def heads(x, n):
        return x.view(T, n, D).transpose(0, 1).repeat_interleave(H // n, dim=0)  # [H, T, D]

    x = w["embed_tokens.weight"][ids[0]]
    for i in range(c.n_layers):
        p = lambda name: w[f"transformer.layers.{i}.{name}.weight"]  # noqa: B023 - used within the iteration
        h = norm(x, p("attn_norm"))
        q = rope(heads(h @ p("attn.q_proj").T, H))
        k = rope(heads(h @ p("attn.k_proj").T, c.kv_heads))
        v = heads(h @ p("attn.v_proj").T, c.kv_heads)
        scores = (q @ k.transpose(1, 2)) / D**0.5
        y = scores.masked_fill(~mask, float("-inf")).softmax(-1) @ v
        x = x + y.transpose(0, 1).reshape(T, -1) @ p("attn.o_proj").T
        h = norm(x, p("mlp_norm"))
        x = x + (F.silu(h @ p("mlp.gate_proj").T) * (h @ p("mlp.up_proj").T)) @ p("mlp.down_proj").T
    logp = (norm(x, w["norm.weight"]) @ w["lm_head.weight"].T).log_softmax(-1)
    return -(logp.exp() * logp).sum(-1)[None]


def text_ids(make_text, n_bytes: int, seed: int = 5) -> torch.Tensor:
    return torch.tensor([encode(make_text(random.Random(seed), n_bytes)[:n_bytes])])


def random_entropy_model(n_layers: int, window: int | None = 512, seed: int = 0) -> EntropyModel:
    torch.manual_seed(seed)
    config = EntropyModelConfig(
        dim=32, n_layers=n_layers, n_heads=2, n_kv_heads=1, ffn_dim=48, window=window, max_seq_len=4096
    )
    return EntropyModel(config).eval()


@pytest.mark.parametrize("n_layers", [1, 2])
def test_entropies_on_2000_bytes_equal_the_sliding_window_reference(make_text, n_layers):
    model = random_entropy_model(n_layers)
    ids = text_ids(make_text, 2000)
    with torch.no_grad():
        expected = reference_entropies(model, ids, window=512)
        torch.testing.assert_close(model.entropies(ids), expected, atol=1e-4, rtol=0)  # one pass
        chunked = model.entropies(ids, chunk_size=300)  # chunks continuing a KV cache
        torch.testing.assert_close(chunked, expected, atol=1e-4, rtol=0)
        unwindowed = with_entropy_window(model, None)
        assert unwindowed.config.window is None and model.config.window == 512
        full = reference_entropies(model, ids, window=None)
        torch.testing.assert_close(unwindowed.entropies(ids), full, atol=1e-4, rtol=0)
    # the window only matters past 512 bytes, and there it does
    torch.testing.assert_close(full[:, :512], expected[:, :512], atol=1e-4, rtol=0)
    assert (full[:, 600:] - expected[:, 600:]).abs().max() > 1e-2


def test_one_layer_entropy_at_t_is_that_of_the_window_ending_at_t(make_text):
    model = random_entropy_model(1)
    ids = text_ids(make_text, 2000)
    with torch.no_grad():
        entropies = model.entropies(ids)
        for t in (511, 700, 1234, 2000):
            alone = model.entropies(ids[:, t - 511 : t + 1])  # RoPE is relative: positions may start at 0
            torch.testing.assert_close(entropies[:, t], alone[:, -1], atol=1e-4, rtol=0)


def trained_entropy_model(make_text, window: int, steps: int = 80) -> EntropyModel:
    """A one-layer entropy model trained briefly on sequences of 2 x ``window`` bytes."""
    torch.manual_seed(0)
    model = EntropyModel(
        EntropyModelConfig(dim=32, n_layers=1, n_heads=2, ffn_dim=64, window=window, max_seq_len=8192)
    )
    data = torch.tensor(encode(make_text(random.Random(0), 200_000))[1:])
    optimiser = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        rows = torch.stack(
            [
                data[s : s + 2 * window + 1]
                for s in torch.randint(0, len(data) - 2 * window - 1, (16,), generator=g)
            ]
        )
        loss = F.cross_entropy(model(rows[:, :-1]).flatten(0, 1), rows[:, 1:].flatten())
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return model.eval()


def mean_patch_size(model: EntropyModel, ids: torch.Tensor, threshold: float) -> float:
    lengths = patch_lengths(ids, PatchingConfig(threshold=threshold), model.entropies(ids))
    return ids.shape[1] / int((lengths > 0).sum())


def test_windowed_patches_do_not_drift_on_long_text(make_text):
    """The model is trained on 128-byte rows with a 64-byte window (the released one: 512); patching text 60
    windows long keeps the mean patch size of a short text, while the unwindowed patcher drifts away."""
    model = trained_entropy_model(make_text, window=64)
    short, long = text_ids(make_text, 300), text_ids(make_text, 4000)
    threshold = float(model.entropies(short)[0, 1:].quantile(0.75))
    windowed = mean_patch_size(model, short, threshold), mean_patch_size(model, long, threshold)
    assert 3 < windowed[0] < 5 and abs(windowed[1] / windowed[0] - 1) < 0.1
    unwindowed = with_entropy_window(model, None)
    drift = mean_patch_size(unwindowed, long, threshold) / mean_patch_size(unwindowed, short, threshold)
    assert abs(drift - 1) > 0.3


def test_loaders_keep_the_window(tmp_path):
    """512 when a config leaves the window out; what it says otherwise (our config, transformers', original)."""
    model = tiny_blt()
    model.save_pretrained(tmp_path / "hf", format="hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["patcher_config"]["sliding_window"] == 16
    assert BLT.from_pretrained(tmp_path / "hf").config.entropy_model.window == 16
    del config["patcher_config"]["sliding_window"]
    (tmp_path / "hf" / "config.json").write_text(json.dumps(config))
    assert BLT.from_pretrained(tmp_path / "hf").config.entropy_model.window == 512
    assert EntropyModel.from_pretrained(tmp_path / "hf").config.window == 512
    model.patcher.save_pretrained(tmp_path / "ours")
    ours = json.loads((tmp_path / "ours" / "config.json").read_text())
    del ours["config"]["window"]
    (tmp_path / "ours" / "config.json").write_text(json.dumps(ours))
    assert EntropyModel.from_pretrained(tmp_path / "ours").config.window == 512
    # the explicit option, on a BLT: its bundled patcher loses (or gets back) the window, weights kept
    ids = torch.tensor([encode("x" * 40)])
    before = model.patcher.entropies(ids)
    assert with_entropy_window(model, None) is model and model.config.entropy_model.window is None
    assert model.patcher.config.window is None and not model.patcher.training
    torch.testing.assert_close(model.patcher.entropies(ids)[:, :16], before[:, :16])
    with_entropy_window(model, 16)
    torch.testing.assert_close(model.patcher.entropies(ids), before)
    with pytest.raises(ValueError, match="has no entropy model"):
        with_entropy_window(tiny_blt(entropy=False), 512)
