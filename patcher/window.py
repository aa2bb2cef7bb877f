"""The entropy model's sliding attention window, chosen after loading.

The released entropy model was trained with a 512-byte window. Every loader here keeps it: from the original
``params.json`` (its ``sliding_window``), a transformers ``patcher_config`` (``sliding_window``) or our own
config (``window``), and 512 when none of them says. A loader that drops it lets every byte attend to the whole
past, and past about 512 bytes the entropies drift until patches collapse to about one byte
(facebookresearch/blt#141). :func:`with_entropy_window` sets the window of a loaded model explicitly, for
instance ``None`` to reproduce such an unwindowed patcher for parity with those loaders.
"""

from __future__ import annotations

import dataclasses

from torch import nn

from blt.patcher.entropy_model import EntropyModel


def with_entropy_window(model: nn.Module, window: int | None, backend: str = "sdpa") -> nn.Module:
    """``model`` with its entropy model attending within ``window`` bytes (None: the whole past).

    An EntropyModel comes back as a new one with the same weights; a BLT gets its bundled patcher replaced
    (and ``config.entropy_model`` updated) and is returned itself.
    """
    if isinstance(model, EntropyModel):
        return _rebuilt(model, window, backend)
    patcher = getattr(model, "patcher", None)
    if not isinstance(patcher, EntropyModel):
        raise ValueError(f"{type(model).__name__} has no entropy model (a BLT needs a bundled patcher)")
    model.patcher = _rebuilt(patcher, window, backend).requires_grad_(False)
    model.config.entropy_model = model.patcher.config
    return model


def _rebuilt(model: EntropyModel, window: int | None, backend: str) -> EntropyModel:
    # the window is fixed when attention layers and caches are built, so build the model anew
    new = EntropyModel(dataclasses.replace(model.config, window=window), backend)
    new.load_state_dict(model.state_dict(), strict=True)
    weight = next(model.parameters())
    return new.to(weight.device, weight.dtype).train(model.training)
