"""Patching overridden for one call (``BLT.forward`` / ``generate`` ``patching=``): patches, FLOPs, targets
calibrated on the input, greedy decoding under an override, the model's own config untouched, bad input."""

from __future__ import annotations

import copy
import dataclasses
import math

import pytest
import torch
from tiny_blt import random_ids, tiny_blt

from blt.config import ConfigError, PatchingConfig
from blt.eval.dial import resolve_patching
from blt.eval.flops import blt_flops_spent
from blt.model import BLT
from blt.patcher import calibrate_threshold

T = 97  # BOS + 96 bytes: static patches of 5 leave a short last one


@pytest.fixture(scope="module")
def model():
    return tiny_blt(seed=2)


@pytest.fixture(scope="module")
def static():
    return tiny_blt(seed=1, entropy=False, scheme="static", patch_size=3)


@pytest.fixture(scope="module")
def ids():
    return random_ids(2, T, seed=7)


def patches(lengths: torch.Tensor) -> list[int]:
    return lengths.gt(0).sum(1).tolist()


def every(k: int) -> list[int]:
    """Patch lengths of BOS + 96 bytes cut every ``k`` bytes: BOS alone, then k, k, ..., the rest."""
    return [1] + [k] * ((T - 1) // k) + ([(T - 1) % k] if (T - 1) % k else [])


def flops_spent(model, ids, lengths, patching) -> float:
    """FLOPs the forward spends on every position of ids [B, T] cut into lengths [B, P], entropy model
    included when the scheme ran it."""
    entropy = model.config.entropy_model if patching.scheme in ("entropy", "relative", "combined") else None
    return sum(blt_flops_spent(model.config, ids.shape[1], row, 0, entropy).total for row in lengths)


def with_patching(model, patching: PatchingConfig) -> BLT:
    """A copy of ``model`` whose own config patches as ``patching``: what an override must equal."""
    other = copy.deepcopy(model)
    other.config.patching = patching
    return other


# ----------------------------------------------------------------------------------------------------------
# overrides change the patches, and only for the call


def test_a_higher_threshold_gives_fewer_longer_patches_and_spends_fewer_flops(model, ids):
    own = model.config.patching.threshold
    counts, flops = [], []
    for threshold in (0.5 * own, own, 1.02 * own, 1e3):
        out = model(ids, patching={"threshold": threshold})
        counts.append(sum(patches(out.patch_lengths)))
        flops.append(flops_spent(model, ids, out.patch_lengths, model.config.patching))
        # the same logits and patches as a model configured so
        ref = with_patching(model, dataclasses.replace(model.config.patching, threshold=threshold))(ids)
        assert torch.equal(out.patch_lengths, ref.patch_lengths)
        torch.testing.assert_close(out.logits, ref.logits, atol=0, rtol=0)
    assert counts == sorted(counts, reverse=True) and len(set(counts)) == 4
    assert counts[-1] == 2 * 2  # above every entropy: only the forced patches (BOS, then one patch)
    assert flops == sorted(flops, reverse=True) and len(set(flops)) == 4
    assert torch.equal(model(ids, patching={}).patch_lengths, model(ids).patch_lengths)


def test_static_override_cuts_every_k_bytes_and_does_not_run_the_entropy_model(model, ids):
    calls = []
    hook = model.patcher.register_forward_hook(lambda *_: calls.append(1))
    try:
        for k in (1, 3, 5, 96):
            out = model(ids, patching=PatchingConfig(scheme="static", patch_size=k))
            # BOS is its own patch (position 1 always starts one), then ceil(96 / k) patches of k bytes
            assert patches(out.patch_lengths) == [1 + math.ceil((T - 1) / k)] * 2
            assert out.patch_lengths[0].tolist() == every(k)
        assert calls == []  # a scheme that reads no entropies does not pay for them
        model(ids)
        assert calls == [1]
    finally:
        hook.remove()


def test_max_patch_length_caps_the_patches(model, ids):
    uncapped = model(ids, patching={"threshold": 1e3}).patch_lengths
    assert uncapped.max() == T - 1
    for cap in (2, 7):
        out = model(ids, patching={"threshold": 1e3, "max_patch_length": cap}).patch_lengths
        assert out.max() == cap and out[0].tolist() == out[1].tolist() == every(cap)
    # over the model's own entropy patching, the cap only splits the long patches
    own, capped = model(ids).patch_lengths, model(ids, patching={"max_patch_length": 2}).patch_lengths
    assert own.max() > 2 and capped.max() == 2 and sum(patches(capped)) > sum(patches(own))


def test_overrides_leave_the_model_config_and_its_saved_config_untouched(model, ids, tmp_path):
    before = copy.deepcopy(model.config)
    model.save_pretrained(tmp_path / "before")
    saved = (tmp_path / "before" / "config.json").read_bytes()
    prompt = ids[:, :48]  # [2, 48]: generate calibrates a target on it, as the forward does
    overrides = [
        {"threshold": 0.1, "max_patch_length": 3},
        {"scheme": "static", "patch_size": 6},
        {"target_patch_size": 3.0},
        {"target_flops_per_byte": flops_per_position(model, prompt, {"threshold": 1e3}) * 1.1},
        PatchingConfig(scheme="space"),
    ]
    for patching in overrides:
        model(prompt, patching=patching)
        model.generate(prompt, 6, temperature=0, patching=patching)
        model.generate(prompt, 3, temperature=0, patching=patching, use_cache=False)
    assert model.config == before
    model.save_pretrained(tmp_path / "after")
    assert (tmp_path / "after" / "config.json").read_bytes() == saved
    assert BLT.from_pretrained(tmp_path / "after").config == before


def test_a_patching_config_is_not_kept_by_reference(model, ids):
    mine = PatchingConfig(scheme="static", patch_size=4)
    resolved = resolve_patching(model, mine, ids)
    assert (
        resolved == mine and resolved is not mine and resolve_patching(model, None) is model.config.patching
    )


def test_patch_lengths_and_patching_together_are_refused(model, ids):
    lengths = model(ids).patch_lengths
    with pytest.raises(ValueError, match="give patch_lengths or patching, not both"):
        model(ids, lengths, patching={"threshold": 1.0})


# ----------------------------------------------------------------------------------------------------------
# targets calibrated on the input


def flops_per_position(model, ids, patching) -> float:
    out = model(ids, patching=patching)
    return flops_spent(model, ids, out.patch_lengths, resolve_patching(model, patching, ids)) / ids.numel()


@pytest.mark.parametrize("scheme", ["entropy", "relative"])
def test_a_target_patch_size_is_met_on_the_input(model, ids, scheme):
    out = model(ids, patching={"scheme": scheme, "target_patch_size": 3.0})
    assert ids.numel() / sum(patches(out.patch_lengths)) == pytest.approx(3.0, abs=0.1)
    base = dataclasses.replace(model.config.patching, scheme=scheme)
    entropies = model.patcher.entropies(ids)
    expected = calibrate_threshold(list(ids), list(entropies), 3.0, base)  # the calibration blt-eval uses
    resolved = resolve_patching(model, {"scheme": scheme, "target_patch_size": 3.0}, ids)
    assert resolved == expected.patching(base)


def test_a_target_flops_per_byte_is_met_on_the_input(model, ids):
    cheapest = flops_per_position(model, ids, {"threshold": 1e3})
    dearest = flops_per_position(model, ids, {"threshold": 0.0})
    target = (cheapest + dearest) / 2
    assert flops_per_position(model, ids, {"target_flops_per_byte": target}) == pytest.approx(
        target, rel=0.01
    )


def test_generate_under_an_override_equals_recomputation_and_a_model_configured_so(model):
    prompts = [b"The override", b"holds for", b"every new byte of a row"]
    for patching in (
        {"threshold": 0.5 * model.config.patching.threshold},
        {"max_patch_length": 2},
        {"scheme": "static", "patch_size": 3},
        {"target_patch_size": 2.5},
    ):
        cached = model.generate(prompts, 24, temperature=0, patching=patching)
        assert model.generate(prompts, 24, temperature=0, patching=patching, use_cache=False) == cached
        # a target is calibrated once, on the prompts (BOS + bytes), and holds from then on
        rows = [torch.tensor([1] + [b + 4 for b in p]) for p in prompts]
        configured = with_patching(model, resolve_patching(model, patching, rows))
        assert configured.generate(prompts, 24, temperature=0) == cached
    assert model.generate(prompts, 24, temperature=0, patching={"threshold": 1e3}) != model.generate(
        prompts, 24, temperature=0
    )


# ----------------------------------------------------------------------------------------------------------
# bad input


@pytest.mark.parametrize(
    "patching, message",
    [
        ({"threshold": float("nan")}, "patching.threshold must be a number, got NaN"),
        ({"threshold": -0.5}, "patching.threshold must be >= 0 (entropies are never negative), got -0.5"),
        (PatchingConfig(threshold=-0.5), "patching.threshold must be >= 0"),
        ({"treshold": 1.0}, "patching.treshold: no such patching field; known: scheme, threshold,"),
        ({"threshold": "high"}, "patching.threshold: expected float. Got value: high"),
        ({"max_patch_length": 2.5}, "patching.max_patch_length: expected int or null"),
        ({"scheme": "words"}, "patching.scheme: expected one of ['entropy', 'relative'"),
        ("entropy", "patching must be a PatchingConfig, a dict of its fields or None, got str"),
        ({"target_patch_size": 500.0}, "patching.target_patch_size 500 is out of reach on this input"),
        ({"target_patch_size": 0.5}, "patching.target_patch_size must be a finite number >= 1"),
        ({"target_patch_size": "big"}, "patching.target_patch_size must be a number, got 'big'"),
        (
            {"target_flops_per_byte": 1e15},
            "patching.target_flops_per_byte 1e+15 is out of reach on this input",
        ),
        ({"target_flops_per_byte": -1.0}, "patching.target_flops_per_byte must be a finite number > 0"),
        ({"target_patch_size": 3.0, "target_flops_per_byte": 1e5}, "give one of them, not both"),
        ({"target_patch_size": 3.0, "threshold": 1.0}, "sets the threshold itself: drop patching.threshold"),
        ({"scheme": "space", "target_patch_size": 3.0}, "the patching scheme is 'space'"),
    ],
)
def test_bad_overrides_are_one_line_errors(model, ids, patching, message):
    for call in (
        lambda: model(ids, patching=patching),
        lambda: model.generate(b"x", 2, patching=patching),
        lambda: model.generate(b"x", 2, patching=patching, use_cache=False),
    ):
        with pytest.raises(ConfigError) as e:
            call()
        assert message in str(e.value) and "\n" not in str(e.value)


def test_an_unreachable_target_names_the_closest_reachable_one(model, ids):
    with pytest.raises(ConfigError) as e:
        model(ids, patching={"target_patch_size": 500.0})
    longest = ids.numel() / sum(patches(model(ids, patching={"threshold": 1e3}).patch_lengths))
    assert f"(closest reachable: {longest:.4g})" in str(e.value)
    with pytest.raises(ConfigError) as e:
        model(ids, patching={"target_flops_per_byte": 1.0})
    cheapest = flops_per_position(model, ids, {"threshold": 1e3})
    assert f"(closest reachable: {cheapest:.4g})" in str(e.value)


@pytest.mark.parametrize(
    "patching, message",
    [
        ({"scheme": "entropy"}, "patching.scheme entropy: this BLT has no entropy model to patch with"),
        (
            PatchingConfig(scheme="combined"),
            "this BLT has no entropy model to patch with (no bundled patcher)",
        ),
        ({"target_patch_size": 3.0}, "calibrates an entropy threshold, but the patching scheme is 'static'"),
        ({"scheme": "entropy", "target_patch_size": 3.0}, "this BLT has no entropy model to patch with"),
    ],
)
def test_entropy_patching_needs_a_bundled_entropy_model(static, ids, patching, message):
    with pytest.raises(ConfigError) as e:
        static(ids, patching=patching)
    assert message in str(e.value) and "\n" not in str(e.value)
    assert patches(static(ids, patching={"patch_size": 8}).patch_lengths) == [1 + math.ceil((T - 1) / 8)] * 2
