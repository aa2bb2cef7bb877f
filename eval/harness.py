"""lm-evaluation-harness model ``blt``: any checkpoint this package loads, evaluated byte by byte.

    pip install -e '.[eval]'
    blt-lm-eval --model blt --model_args pretrained=runs/tiny-blt/model,batch_size=8,device=cpu --tasks arc_easy

lm-eval 0.4 has no entry point for models, so importing this module registers ``blt`` in lm-eval's model
registry. ``blt-lm-eval`` (:func:`main`) is lm-eval's own command line after that import, with exactly its
arguments; from Python, ``import blt.eval.harness`` and then ``lm_eval.simple_evaluate(model="blt", ...)``.

model_args: ``pretrained`` (a checkpoint directory of any kind ``blt.eval.loading`` loads, a training run
directory, or a Hugging Face Hub id), ``batch_size``, ``device``, ``context`` (ids per window; default the
model's maximum), ``stride`` (targets per later window of a rolling loglikelihood; default context/2),
``max_gen_toks`` (default generation length in bytes) and ``seed`` (of sampled generations).

What is scored is the package's own definition (``blt/eval/bpb.py``), through the checkpoint's own scorer
and patching: a text is BOS + its bytes, ids for the BLT and the entropy model, BPE tokens for the baseline.

- ``loglikelihood(context, continuation)``: log p(continuation | BOS + context), summed over its bytes
  (tokens for the baseline, whose context and continuation are tokenized apart so the continuation's tokens
  spell exactly its bytes); ``is_greedy`` when every one of them is the argmax.
- ``loglikelihood_rolling(text)``: the windows of ``blt-eval bpb`` (every byte predicted once, EOS not
  scored), so the harness's ``bits_per_byte`` and ``byte_perplexity`` equal ``blt-eval bpb --split all``.
- ``generate_until``: ``BLT.generate`` (cached decoding; the entropy model and the baseline decode one
  request at a time with their KV cache), ``max_gen_toks`` bytes at most, cut before the first ``until``
  string; greedy unless the task sets ``do_sample`` with a temperature above 0.

A request longer than the context is cut from the left, as the harness expects (logged once).
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm import tqdm

from blt.checkpoint import BLT_KINDS
from blt.config import ConfigError
from blt.eval.bpb import scorer_for, windows
from blt.tokenizer import PAD_ID

try:
    import lm_eval.models  # noqa: F401  lm-eval's own models first: it only adds them to an empty registry
    from lm_eval.api.model import LM
    from lm_eval.api.registry import register_model
    from lm_eval.utils import simple_parse_args_string
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError(f"blt.eval.harness needs lm-eval: pip install 'blt[eval]' ({e})") from None

log = logging.getLogger(__name__)

MODEL_ARGS = ("pretrained", "batch_size", "device", "context", "stride", "max_gen_toks", "seed")
# keys the harness itself adds to model_args; nothing here needs them (no auto batch size, no remote code)
HARNESS_ARGS = ("max_batch_size", "trust_remote_code")


def load(pretrained: str):
    """The one place that loads a checkpoint: a local path or a Hugging Face Hub id (blt.checkpoint.hub)."""
    from blt.checkpoint import load as load_checkpoint

    return load_checkpoint(pretrained)


def pick_device(name: str | None) -> torch.device:
    """The model's device; the harness's default (cuda:0) falls back to the CPU on a machine without CUDA."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise ConfigError(f"model_args device={name!r} is not a torch device: {e}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        log.warning(
            "device %s (the harness's default unless given) has no CUDA here: running on the CPU", name
        )
        return torch.device("cpu")
    return device


def positive_int(key: str, value, allow_none: bool = False) -> int | None:
    """An integer model_arg (the CLI may pass "8" as text); a clear error for anything else."""
    if value is None and allow_none:
        return None
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"model_args {key} must be a positive integer, got {value!r}")
    return value


def as_bytes(text: str) -> bytes:
    return text.encode("utf-8")


@dataclass
class Generation:
    """One request's generation arguments, in the terms of ``BLT.generate``."""

    until: list[bytes]
    max_bytes: int
    temperature: float  # 0: greedy
    top_k: int | None
    top_p: float | None


def generation(kwargs: dict, default_max: int) -> Generation:
    """The harness's gen_kwargs (HF generate's names) -> :class:`Generation`; unknown keys are an error."""
    kwargs = dict(kwargs)
    until = kwargs.pop("until", None) or []
    until = [until] if isinstance(until, str) else list(until)
    if not all(isinstance(u, str) for u in until):
        raise ConfigError(f"generation argument until must be a string or a list of strings, got {until!r}")
    max_bytes = kwargs.pop("max_gen_toks", kwargs.pop("max_new_tokens", default_max))
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 0:
        raise ConfigError(f"generation argument max_gen_toks must be an integer >= 0, got {max_bytes!r}")
    # as in HF generate: sampling only when asked for, and temperature 0 means greedy all the same
    do_sample = bool(kwargs.pop("do_sample", False))
    temperature = float(kwargs.pop("temperature", 1.0 if do_sample else 0.0))
    top_k = kwargs.pop("top_k", None) or None  # HF's top_k=0 means no top-k
    top_p = kwargs.pop("top_p", None)
    if kwargs.pop("num_beams", 1) != 1:
        raise ConfigError("generation argument num_beams: --model blt has no beam search (num_beams=1 only)")
    if kwargs:
        raise ConfigError(
            f"unsupported generation argument(s) {', '.join(sorted(kwargs))} for --model blt "
            "(known: until, max_gen_toks, do_sample, temperature, top_k, top_p)"
        )
    if not temperature >= 0:
        raise ConfigError(f"generation argument temperature must be >= 0, got {temperature}")
    return Generation(
        [as_bytes(u) for u in until if u], max_bytes, temperature if do_sample else 0.0, top_k, top_p
    )


def cut(generated: bytes, until: list[bytes]) -> bytes:
    """``generated`` up to (without) the first occurrence of any stop string."""
    ends = [i for i in (generated.find(u) for u in until) if i >= 0]
    return generated[: min(ends)] if ends else generated


@register_model("blt")
class BLTHarnessLM(LM):
    """The harness's view of a checkpoint: its scorer (``blt.eval.bpb``) for likelihoods, its generator."""

    def __init__(self, pretrained: str | None = None, **kwargs):
        super().__init__()
        unknown = sorted(set(kwargs) - set(MODEL_ARGS) - set(HARNESS_ARGS))
        if unknown:
            raise ConfigError(
                f"unknown model_args key(s) {', '.join(unknown)} for --model blt (known: {', '.join(MODEL_ARGS)})"
            )
        if not pretrained:
            raise ConfigError("--model blt needs model_args pretrained=<checkpoint directory or hub id>")
        if str(kwargs.get("batch_size", 1)).startswith("auto"):
            raise ConfigError("--model blt has no automatic batch size: give batch_size=N")
        self.batch_size = positive_int("batch_size", kwargs.get("batch_size", 1))
        self.max_gen_toks = positive_int("max_gen_toks", kwargs.get("max_gen_toks", 256))
        self.seed = int(kwargs.get("seed", 1234))
        self._device = pick_device(kwargs.get("device"))
        loaded = load(str(pretrained))
        self.kind, self.model = loaded.kind, loaded.model.to(self._device)
        try:
            self.scorer = scorer_for(loaded, positive_int("context", kwargs.get("context"), allow_none=True))
            self.context = self.scorer.context  # ids per window
            limit = scorer_for(loaded).context
            if self.kind in BLT_KINDS and self.context > limit:  # the causal LMs' scorer checks this itself
                raise ValueError(f"context {self.context} is longer than the BLT's maximum of {limit} ids")
            self.stride = positive_int("stride", kwargs.get("stride", self.context // 2))
            windows(self.context, self.context, self.stride)  # a bad context/stride fails now, not mid-run
        except ValueError as e:
            raise ConfigError(f"model_args: {e}") from None
        self.warned = False

    @classmethod
    def create_from_arg_obj(cls, arg_dict: dict, additional_config: dict | None = None):
        # The CLI always sends its own batch_size (default 1) and device (default cuda:0) along with
        # model_args; a key written in model_args wins over them instead of being a duplicate argument.
        extra = {k: v for k, v in (additional_config or {}).items() if v is not None and k not in arg_dict}
        return cls(**arg_dict, **extra)

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None):
        return cls.create_from_arg_obj(simple_parse_args_string(arg_string), additional_config)

    # ------------------------------------------------------------------------------------------------------
    # scoring

    def truncated(self, ids: list[int], keep: int) -> list[int]:
        """The last ``keep`` ids, as the harness cuts long requests; says so the first time."""
        if len(ids) <= keep:
            return ids
        if not self.warned:
            log.warning(
                "a request of %d ids does not fit the model's context (%d ids here): cut from the left, as the "
                "harness expects; later requests that do not fit are cut the same way without a message",
                len(ids),
                keep,
            )
            self.warned = True
        return ids[-keep:]

    @torch.no_grad()
    def score(self, rows: list[tuple[list[int], int]], progress: bool = True) -> list[tuple[float, bool]]:
        """(ids, n) -> (sum of log p of the last n ids given the ids before them, all of them argmax).

        Batched longest first, rows right-padded (causal models never look at the padding); float64
        log-softmax as ``blt-eval bpb``.
        """
        results: list[tuple[float, bool]] = [(0.0, True)] * len(rows)
        order = sorted((i for i, (_, n) in enumerate(rows) if n > 0), key=lambda i: -len(rows[i][0]))
        for start in tqdm(
            range(0, len(order), self.batch_size), desc="scoring batches", disable=not progress
        ):
            batch = order[start : start + self.batch_size]
            T = max(len(rows[i][0]) for i in batch)
            ids = torch.full((len(batch), T), PAD_ID, dtype=torch.long)
            for row, i in enumerate(batch):
                ids[row, : len(rows[i][0])] = torch.tensor(rows[i][0])
            ids = ids.to(self._device)
            logits, _ = self.scorer.forward(ids)
            for row, i in enumerate(batch):
                L, n = len(rows[i][0]), rows[i][1]
                logp = F.log_softmax(logits[row, L - n - 1 : L - 1].double(), dim=-1)  # predicts ids L-n..L-1
                targets = ids[row, L - n : L]
                total = logp.gather(-1, targets.unsqueeze(-1)).sum()
                results[i] = (float(total), bool((logp.argmax(-1) == targets).all()))
        return results

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        rows = []
        for request in requests:
            context, continuation = request.args
            targets = self.scorer.encode(as_bytes(continuation))[1:]  # without the BOS encode adds
            if len(targets) >= self.context:
                raise ValueError(
                    f"a continuation of {len(targets)} ids does not fit the model's context of {self.context} ids"
                )
            ids = self.scorer.encode(as_bytes(context)) + targets
            rows.append((self.truncated(ids, self.context), len(targets)))
        return self.score(rows, not disable_tqdm)

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        rows, owner = [], []
        for doc, request in enumerate(requests):
            ids = self.scorer.encode(as_bytes(request.args[0]))
            for start, first, end in windows(len(ids), self.context, self.stride):
                rows.append((ids[start:end], end - first))
                owner.append(doc)
        totals = [0.0] * len(requests)
        for doc, (logp, _) in zip(owner, self.score(rows, not disable_tqdm)):
            totals[doc] += logp
        return totals

    # ------------------------------------------------------------------------------------------------------
    # generation

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Requests grouped by their generation arguments, in order; request j of a group samples with seed
        ``seed + j`` whatever the batch size."""
        groups: dict[str, list[int]] = {}
        for i, request in enumerate(requests):
            groups.setdefault(json.dumps(request.args[1], sort_keys=True, default=str), []).append(i)
        outputs = [""] * len(requests)
        bar = tqdm(total=len(requests), desc="generating", disable=disable_tqdm)
        for indices in groups.values():
            settings = generation(requests[indices[0]].args[1], self.max_gen_toks)
            keep = self.context - settings.max_bytes
            if keep < 1:
                raise ValueError(
                    f"max_gen_toks {settings.max_bytes} leaves no room for a prompt in the model's context of "
                    f"{self.context} ids"
                )
            for start in range(0, len(indices), self.batch_size):
                batch = indices[start : start + self.batch_size]
                prompts = [
                    self.truncated(self.scorer.encode(as_bytes(requests[i].args[0])), keep) for i in batch
                ]
                for i, text in zip(batch, self.generate(prompts, settings, self.seed + start)):
                    outputs[i] = cut(text, settings.until).decode("utf-8", errors="replace")
                bar.update(len(batch))
        bar.close()
        return outputs

    def generate(self, prompts: list[list[int]], settings: Generation, seed: int) -> list[bytes]:
        """Continuations (bytes) of id prompts; row j samples with ``seed + j``."""
        if settings.max_bytes == 0:
            return [b""] * len(prompts)
        if self.kind not in BLT_KINDS:
            return [self.generate_causal(p, settings, seed + j) for j, p in enumerate(prompts)]
        from blt.tokenizer import decode

        # each row stops once a stop string completes; cut() then drops it, as lm-eval's own models do
        new = self.model.generate(
            [torch.tensor(p) for p in prompts],
            max_new_bytes=settings.max_bytes,
            temperature=settings.temperature,
            top_k=settings.top_k,
            top_p=settings.top_p,
            stop=settings.until,
            seed=seed,
        )
        return [decode(ids) for ids in new]

    @torch.no_grad()
    def generate_causal(self, prompt: list[int], settings: Generation, seed: int) -> bytes:
        """Cached decoding of the entropy model or the baseline: one id per step until a stop string, EOS
        or ``max_bytes`` bytes (a baseline token may hold several)."""
        from blt.generate import sample

        if self.kind == "blt-baseline":
            from blt.baseline import EOS_ID

            to_bytes = self.model.decode
        else:
            from blt.tokenizer import EOS_ID, decode

            to_bytes = decode
        generator = torch.Generator(self._device).manual_seed(seed)
        cache = self.model.new_cache()
        logits = self.model(torch.tensor([prompt], device=self._device), cache=cache)[0, -1]
        out = b""
        for _ in range(settings.max_bytes):  # every id but EOS and control ids brings at least one byte
            token = sample(logits, settings.temperature, settings.top_k, settings.top_p, generator)
            if token == EOS_ID:
                break
            out += to_bytes([token])
            if len(out) >= settings.max_bytes or any(u in out for u in settings.until):
                break
            logits = self.model(torch.tensor([[token]], device=self._device), cache=cache)[0, -1]
        return out[: settings.max_bytes]


def main(argv: list[str] | None = None) -> int:
    """``blt-lm-eval``: lm-eval's command line with the ``blt`` model registered (by importing this module)."""
    from lm_eval.__main__ import cli_evaluate

    saved = sys.argv
    if argv is not None:  # lm-eval's parser reads sys.argv
        sys.argv = ["blt-lm-eval", *argv]
    try:
        cli_evaluate()
    except ValueError as e:  # what a user got wrong (ConfigError, CheckpointError, bad requests), as one line
        print(f"blt-lm-eval: error: {e}", file=sys.stderr)
        return 2
    finally:
        sys.argv = saved
    return 0


if __name__ == "__main__":
    sys.exit(main())
