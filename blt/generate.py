"""Sampling bytes from a BLT, with cached incremental decoding of a whole batch at once.

Each new byte costs one step of every part, through the model's own modules and their caches, and none of
them grows with the context except the global transformer's cache, which gains one entry per patch:

- the entropy model (windowed KV cache, in a :class:`~blt.patcher.StreamingPatcher`) gives the new byte's
  entropy, and the patching decision says whether the next byte starts a patch;
- the local encoder runs the byte through its windowed layers and adds it to the row's open patch;
- when a patch closes, its byte states are pooled and cross-attended into one patch, and the global
  transformer takes one step;
- the local decoder runs the byte against the latest closed patch and gives the logits.

The logits equal those of :meth:`BLT.forward` on the whole sequence (patch boundaries at t depend only on
bytes before t), so greedy cached decoding reproduces greedy decoding that recomputes everything.

Prompts of different lengths decode together: each row keeps its own positions, every step advances all
rows through the byte-level parts, and the global transformer steps only the rows that closed a patch. Each
prompt is prefilled on its own through the modules' ordinary forward, then the caches of all prompts are
joined into one batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from numbers import Integral

import torch

from blt.eval.flops import FlopsSpent, blt_flops_spent
from blt.lm import in_eval_mode
from blt.patch_ops import decoder_patch_ids, patch_ids_from_lengths
from blt.patcher import StreamingPatcher, lengths_from_starts
from blt.patcher.schemes import ENTROPY_SCHEMES
from blt.tokenizer import EOS_ID, OFFSET, check_ids, decode, encode
from blt.validation import checks_values


class _Prefill:
    """One prompt [T] run in one chunk through every part, each filling its cache (a batch of one)."""

    def __init__(
        self,
        model,
        ids: torch.Tensor,
        max_len: int,
        patching,
        static: bool,
        patch_len: int,
        grow_global: bool,
    ):
        x = ids.unsqueeze(0)  # [1, T]
        T = x.shape[1]
        self.patcher = StreamingPatcher(patching, model.patcher, 1, max_len, static, history=False)
        starts = self.patcher.feed(x)  # [1, T]
        next_starts = self.patcher.next_starts()  # [1]: does the byte after the prompt start a patch
        self.encoder = model.encoder.new_cache(1, max_len, static)
        h = model.encoder(x, cache=self.encoder)  # [1, T, D]

        lengths = lengths_from_starts(starts)  # [1, P]
        P = lengths.shape[1]
        self.patches = P - 1 + int(next_starts[0])  # all but the open one (position 1 always starts one)
        check_patches(model, self.patches)
        patches = model.encoder.patches(h, patch_ids_from_lengths(lengths, T), P)
        self.global_ = model.global_transformer.new_cache(1, patch_len, static, grow_global)
        latent = model.global_transformer(patches[:, : self.patches], cache=self.global_)  # [1, patches, Dg]
        self.decoder = model.decoder.new_cache(1, max_len, static)
        rows = model.decoder.patch_rows(latent)
        dec_ids = decoder_patch_ids(lengths, T, next_starts)
        self.logits = model.decoder(h, rows, dec_ids, cache=self.decoder)[0, -1]  # [vocab]
        model.decoder.read_patch(self.decoder, latent[:, -1:])
        open_len = 0 if next_starts[0] else int(lengths[0, -1])
        self.encoder.extend_open(h[:, T - open_len :])


def check_patches(model, n: int) -> None:
    limit = model.config.global_transformer.max_seq_len
    if n > limit:
        raise ValueError(f"{n} patches exceed global_transformer.max_seq_len ({limit})")


# The calls of one decoding step that have the same shapes at every step (one position per row, every row
# continuing): the modules' own forwards, run as they are or under torch.compile. Module-level functions
# that take the modules and caches as arguments, so that compiled code is traced once per model and batch
# size and then serves every decoder of that model: dynamo guards on what the calls read (shapes, config
# values), not on which cache object they get.


def byte_step(
    patcher: StreamingPatcher, encoder, x: torch.Tensor, cache
) -> tuple[torch.Tensor, torch.Tensor]:
    """The new ids x [B, 1] through the entropy model and the local encoder (one compiled call, not two):
    whether each ends its patch [B], and their byte states [B, 1, D]."""
    patcher.feed(x, check=False)  # the ids were checked by push, before any cache changed
    return patcher.next_starts(), encoder(x, cache=cache)


def patch_step(model, encoder_cache, cache, decoder_cache, rows: torch.Tensor | None = None) -> None:
    """Every row's open patch (``rows`` [n]: of those rows only), pooled, through the global transformer,
    whose output the local decoder reads from the next byte on (the caller then closes the patches)."""
    patch = model.encoder.open_patches(encoder_cache, rows)  # [B or n, 1, D * k]
    latent = model.global_transformer(patch, cache=cache, rows=rows)  # [B or n, 1, Dg]
    model.decoder.read_patch(decoder_cache, latent, rows)


def rows_step(model, encoder_cache, cache, decoder_cache, rows: torch.Tensor) -> None:
    """:func:`patch_step` of some rows: compiled apart from the step of every row (its own graphs, for
    every number of rows, do not count against that step's recompile limit)."""
    patch_step(model, encoder_cache, cache, decoder_cache, rows)


def decoder_step(decoder, h: torch.Tensor, cache) -> torch.Tensor:
    return decoder(h, cache=cache)[:, -1]


STEPS = (byte_step, patch_step, rows_step, decoder_step)
# (function, device type, options) -> torch.compile's wrapper
_compiled: dict[tuple[str, str, str], object] = {}


def compile_options(device: torch.device) -> dict:
    """torch.compile's arguments for decoding steps on ``device``. On the CPU, Inductor's C++ wrapper calls
    the kernels of a step without Python in between (what a step of a small model costs most), and
    freezing measured faster still (docs/BENCHMARKS.md, "Compiled decoding"; the steps still read the
    weights as they are, which tests/test_compiled_decoding.py checks); on CUDA, CUDA graphs replay a step
    (``reduce-overhead``)."""
    if device.type == "cpu":
        return {"options": {"cpp_wrapper": True, "freezing": True}}
    return {"mode": "reduce-overhead"}


def compiled_step(fn, device: torch.device, options: dict | None = None):
    """``fn`` (one of :data:`STEPS`) under ``torch.compile(fn, **options)`` (default:
    :func:`compile_options`), made once per process, device type and options."""
    options = compile_options(device) if options is None else options
    key = (fn.__name__, device.type, repr(sorted(options.items())))
    if key not in _compiled:
        _compiled[key] = torch.compile(fn, **options)
    return _compiled[key]


class IncrementalDecoder:
    """Caches of all four parts for a batch of sequences; :attr:`logits` [B, vocab] predict each row's next id.

    ``prompts``: a LongTensor [T] (a batch of one) or a list of them (any lengths >= 1). :meth:`push` feeds
    one id per row; :meth:`select` drops rows (finished sequences). ``patching``: a resolved override of the
    model's patching (:func:`blt.eval.dial.resolve_patching`; None: its own). ``max_new``: how many ids
    :meth:`push` will feed at most, if known (sizes static caches).

    ``static`` (default: on CUDA) gives every stack a static KV cache (:class:`blt.layers.KVCache`): a step
    that continues every row has the same shapes at every step, which torch.compile and CUDA graphs need;
    on the CPU the default caches are faster (they attend only to the slots that are filled).

    ``compile``: True runs each step (the entropy model with the local encoder, the global transformer with
    the pooling before it, of every row or of the rows that close a patch, the local decoder) under
    ``torch.compile`` with :func:`compile_options`, and the caches static; a dict gives torch.compile's
    arguments instead (say ``{"backend": "eager"}``: dynamo's tracing alone). The first decoder of a model
    compiles (tens of seconds on a CPU; Inductor's cache on disk shortens it in later processes); later
    decoders of the same shapes reuse the code (cache sizes are rounded up to a power of two for that), and
    it reads the model's weights as they are at each step.
    """

    @torch.inference_mode()
    def __init__(
        self,
        model,
        prompts,
        patching=None,
        max_new: int | None = None,
        static: bool | None = None,
        compile: bool | dict = False,
    ):
        prompts = [prompts] if isinstance(prompts, torch.Tensor) else list(prompts)
        if not prompts or any(p.dim() != 1 or p.numel() == 0 for p in prompts):
            raise ValueError("IncrementalDecoder needs one or more non-empty 1-D id tensors")
        self.model, config = model, model.config
        self.max_len = min(config.encoder.max_seq_len, config.decoder.max_seq_len)
        patching = config.patching if patching is None else patching
        if not isinstance(compile, (bool, dict)):
            raise ValueError(
                f"compile must be True, False or a dict of torch.compile's arguments, got {compile!r}"
            )
        options, compile = (compile, True) if isinstance(compile, dict) else (None, compile)
        if compile and static is False:
            raise ValueError("compile=True needs static caches (static=None or True)")
        device = prompts[0].device
        if static is None:
            static = compile or device.type == "cuda"
        # a static step reads every slot of its cache; the global transformer's holds up to max_len
        # patches, so on the CPU its buffers grow instead (CUDA graphs need them to stay where they are)
        grow_global = compile and device.type == "cpu"
        size = self.max_len
        if max_new is not None:
            size = min(size, max(p.numel() for p in prompts) + max_new)
        self.size, self.max_new = size, max_new
        # the caches' sizes; compiled steps: cache shapes that changed with every prompt length would
        # recompile them, so they round up to a power of two
        capacity = min(1 << (size - 1).bit_length(), self.max_len) if compile else size
        patch_len = min(
            config.global_transformer.max_seq_len, capacity
        )  # a row holds no more patches than ids
        pre = [_Prefill(model, p, capacity, patching, static, patch_len, grow_global) for p in prompts]
        # the caches of the first prompt take in the rows of the others
        first, rest = pre[0], pre[1:]
        self.patcher, self.encoder = first.patcher, first.encoder
        self.global_, self.decoder = first.global_, first.decoder
        self.patcher.add_rows([p.patcher for p in rest])
        self.encoder.add_rows([p.encoder for p in rest])
        self.global_.add_rows([p.global_ for p in rest])
        self.decoder.add_rows([p.decoder for p in rest])
        self.logits = torch.stack([p.logits for p in pre])  # [B, vocab]
        device = self.logits.device
        self.lengths = [p.numel() for p in prompts]  # ids fed per row
        self.patches = [p.patches for p in pre]  # closed patches per row (entries in the global cache)
        if compile:
            self.steps = [compiled_step(fn, device, options) for fn in STEPS]
            for cache in (self.patcher.cache, self.encoder.kv, self.global_, self.decoder.kv):
                if cache is not None:  # (no entropy model: no cache)
                    cache.prepare_decoding_weights()  # now, not in the first compiled step: traced once
        else:
            self.steps = list(STEPS)

    @property
    def batch_size(self) -> int:
        return len(self.lengths)

    @torch.inference_mode()
    def push(self, tokens) -> torch.Tensor:
        """Feed one id per row (list or LongTensor [B]); returns the logits [B, vocab] for the ids after them."""
        model, device = self.model, self.logits.device
        vocab = model.config.vocab_size
        if isinstance(tokens, torch.Tensor):
            if tokens.dtype.is_floating_point or tokens.dtype.is_complex or tokens.dtype == torch.bool:
                raise ValueError(f"push takes integer ids, got a tensor of dtype {tokens.dtype}")
            if checks_values(None, tokens):  # free on the CPU; a device's ids are the caller's to check
                check_ids(tokens, vocab)
        else:  # host ids (generate's) are checked as plain ints: cheaper than any tensor check
            tokens = list(tokens)
            if not all(isinstance(t, Integral) and 0 <= t < vocab for t in tokens):
                check_ids(tokens, vocab)  # names the first bad id
        tokens = torch.as_tensor(tokens, dtype=torch.long, device=device).reshape(-1)
        if tokens.numel() != self.batch_size:
            raise ValueError(f"push takes one id per row ({self.batch_size}), got {tokens.numel()}")
        if max(self.lengths) >= self.size:
            if self.size < self.max_len:
                raise ValueError(f"this decoder was made for at most max_new={self.max_new} pushes per row")
            raise ValueError(f"a sequence would exceed the configured maximum sequence length {self.max_len}")
        x = tokens.unsqueeze(1)  # [B, 1]
        byte, patch_step, rows_step, decoder = self.steps
        # every cache but the global one continues its rows by one position; closes [B]: the byte ends its
        # patch, h [B, 1, D]
        closes, h = byte(self.patcher, model.encoder, x, self.encoder)
        self.encoder.extend_open(h)
        closed = [r for r, c in enumerate(closes.tolist()) if c]
        if closed:
            # the global transformer steps only the rows that closed a patch
            check_patches(model, max(self.patches[r] for r in closed) + 1)
            if self.global_.static:  # its steps change no host state: buffers and bound grow here
                self.global_.reserve(max(self.patches[r] for r in closed) + 1)
            if len(closed) == self.batch_size:
                patch_step(model, self.encoder, self.global_, self.decoder)
            else:
                rows = torch.tensor(closed, device=device)
                rows_step(model, self.encoder, self.global_, self.decoder, rows)
            self.encoder.clear_open(closed)
            for r in closed:
                self.patches[r] += 1
        self.logits = decoder(model.decoder, h, self.decoder)
        self.lengths = [n + 1 for n in self.lengths]
        return self.logits

    def select(self, rows: list[int]) -> None:
        """Keep only rows ``rows`` (in this order); finished sequences leave the batch."""
        index = torch.tensor(rows, device=self.logits.device)
        for cache in (self.patcher, self.encoder, self.global_, self.decoder):
            cache.select(index)
        self.logits = self.logits[index]
        self.lengths = [self.lengths[r] for r in rows]
        self.patches = [self.patches[r] for r in rows]


@dataclass(frozen=True)
class RowReport:
    """What generating one row cost (``generate(..., report=True)``).

    ``flops``: forward FLOPs of the positions whose logits gave the new bytes (the last prompt position and
    every generated byte but the last, which is never fed back), split by part as
    :func:`blt.eval.flops.blt_flops_spent` counts them on the row's actual patches: entropy model, local
    encoder and decoder per byte, the global transformer per patch, attention over the keys attended.
    ``patches_closed``: patches that closed while decoding, each one step of the global transformer.
    """

    prompt_ids: int
    new_bytes: int
    patches_closed: int
    flops: FlopsSpent

    @property
    def flops_per_byte(self) -> float:
        """Forward FLOPs per generated byte."""
        return self.flops.total / self.new_bytes if self.new_bytes else 0.0


def row_report(model, prompt: torch.Tensor, new: list[int], patches_closed: int, patching) -> RowReport:
    """The :class:`RowReport` of prompt ids [L] continued by ``new``, from the row's own patches."""
    L = prompt.numel()
    if not new:
        return RowReport(L, 0, 0, FlopsSpent())
    fed = torch.cat([prompt.cpu().long(), torch.tensor(new[:-1], dtype=torch.long)])  # [L + n - 1]
    patching = model.config.patching if patching is None else patching
    lengths, _ = model.compute_patches(fed.to(model_device(model)).unsqueeze(0), patching)
    entropy = model.config.entropy_model if patching.scheme in ENTROPY_SCHEMES else None
    flops = blt_flops_spent(model.config, fed, lengths[0].cpu(), first=L - 1, entropy_model=entropy)
    return RowReport(L, len(new), patches_closed, flops)


def model_device(model) -> torch.device:
    return next(model.parameters()).device


class Recompute:
    """Reference decoding: the whole forward again for every new byte, row by row."""

    @torch.inference_mode()
    def __init__(self, model, prompts, patching=None):
        prompts = [prompts] if isinstance(prompts, torch.Tensor) else list(prompts)
        self.model, self.ids, self.patching = model, [p.unsqueeze(0) for p in prompts], patching
        self.logits = self.last_logits()  # [B, vocab]

    @torch.inference_mode()
    def push(self, tokens) -> torch.Tensor:
        tokens = torch.as_tensor(tokens, dtype=torch.long).reshape(-1, 1)
        self.ids = [torch.cat([ids, t.to(ids.device)[None]], dim=1) for ids, t in zip(self.ids, tokens)]
        self.logits = self.last_logits()
        return self.logits

    def last_logits(self) -> torch.Tensor:
        return torch.stack([self.model(ids, patching=self.patching).logits[0, -1] for ids in self.ids])

    def select(self, rows: list[int]) -> None:
        self.ids = [self.ids[r] for r in rows]
        self.logits = self.logits[torch.tensor(rows, device=self.logits.device)]


def sample(
    logits: torch.Tensor,
    temperature: float,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> int:
    """One id from logits [vocab]: greedy at temperature 0, else top-k / nucleus sampling."""
    if temperature == 0:
        return int(logits.argmax())
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.numel():
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        # drop an id once the ids before it already cover top_p (the most likely id always stays)
        drop = probs.cumsum(-1) - probs >= top_p
        logits = logits.masked_fill(torch.zeros_like(drop).scatter(0, order, drop), float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))


def _prompt_rows(prompt) -> tuple[list[torch.Tensor], str]:
    """Prompt(s) -> 1-D id tensors and the output kind: 'bytes', 'list' or 'tensor' / 'tensors'."""
    if isinstance(prompt, (str, bytes, bytearray)):
        return [torch.tensor(encode(prompt))], "bytes"
    if isinstance(prompt, torch.Tensor):
        if prompt.dim() == 1:
            return [prompt], "tensor"
        if prompt.dim() == 2:
            return list(prompt), "tensors"
        raise ValueError(f"a prompt tensor must be [T] or [B, T], got shape {tuple(prompt.shape)}")
    if isinstance(prompt, (list, tuple)) and prompt:
        if all(isinstance(p, (str, bytes, bytearray)) for p in prompt):
            return [torch.tensor(encode(p)) for p in prompt], "list"
        if all(isinstance(p, torch.Tensor) and p.dim() == 1 for p in prompt):
            return list(prompt), "tensors"
    raise ValueError(
        "prompt must be str, bytes, a LongTensor [T] or [B, T], or a non-empty list of str/bytes/[T] tensors"
    )


@torch.inference_mode()
@in_eval_mode
def generate(
    model,
    prompt,
    max_new_bytes: int = 128,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    stop: bytes | str | Sequence[bytes | str] | None = None,
    seed: int | None = None,
    use_cache: bool = True,
    patching=None,
    report: bool = False,
    compile: bool | dict = False,
):
    """Continue ``prompt`` by up to ``max_new_bytes`` bytes.

    ``prompt``: str / bytes (BOS is added; returns the new bytes), a list of them (returns a list of bytes),
    or ids as a LongTensor [T] / [B, T] or a list of [T] tensors, used exactly as given (returns the new
    ids as a tensor / list of tensors). A row stops after EOS or once its new bytes end with a stop
    sequence: ``stop`` is one (bytes, or a str read as its UTF-8 bytes) or a list of them; the stop sequence
    is kept in the output, and only new bytes match it (not the prompt).
    ``temperature=0`` is greedy; ``seed`` makes sampling reproducible (row i uses seed + i).
    ``use_cache=False`` recomputes the whole forward for every byte (the reference).
    ``report=True`` returns ``(output, reports)``: one :class:`RowReport` per prompt (patches closed, global
    steps, FLOPs per generated byte, by part) of cached decoding.
    ``patching`` overrides the model's patching for this call, as in ``BLT.forward``; a target patch size or
    FLOPs per byte is calibrated on the prompts, once, and that threshold holds for every new byte.
    ``compile=True`` decodes with compiled steps (:class:`IncrementalDecoder`'s ``compile``, which also takes
    torch.compile's arguments as a dict): the first call for a model compiles for tens of seconds on a CPU,
    later calls decode faster (greedy bytes unchanged).
    """
    rows, kind = _prompt_rows(prompt)
    if not isinstance(max_new_bytes, Integral) or max_new_bytes < 0:
        raise ValueError(f"max_new_bytes must be an integer >= 0, got {max_new_bytes!r}")
    if not temperature >= 0:  # written so that NaN fails too
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if top_k is not None and (not isinstance(top_k, Integral) or top_k <= 0):
        raise ValueError(f"top_k must be a positive integer or None, got {top_k!r}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1] or None, got {top_p}")
    if report and not use_cache:
        raise ValueError("report=True describes cached decoding; it needs use_cache=True")
    if compile and not use_cache:
        raise ValueError("compile=True compiles cached decoding's steps; it needs use_cache=True")
    stops = stop_sequences(stop)
    limit = min(model.config.encoder.max_seq_len, model.config.decoder.max_seq_len)
    device = model_device(model)
    for i, row in enumerate(rows):
        if row.numel() == 0:
            raise ValueError(f"prompt {i} is empty; it needs at least one id (str/bytes prompts get BOS)")
        if row.dtype.is_floating_point or row.dtype == torch.bool:
            raise ValueError(f"prompt ids must be integers, got dtype {row.dtype}")
        check_ids(row, model.config.vocab_size)
        if row.numel() + max_new_bytes > limit:
            raise ValueError(
                f"prompt {i} ({row.numel()} ids) plus {max_new_bytes} new bytes exceeds the configured maximum "
                f"sequence length {limit}"
            )
    if patching is not None:
        from blt.eval.dial import resolve_patching

        patching = resolve_patching(model, patching, rows)
    outputs: list[list[int]] = [[] for _ in rows]
    closed = [0] * len(rows)  # patches closed while decoding, per prompt
    if max_new_bytes:
        generators = [
            torch.Generator(device=device).manual_seed(seed + i) if seed is not None else None
            for i in range(len(rows))
        ]
        prompts = [r.long().to(device) for r in rows]
        if use_cache:
            state = IncrementalDecoder(model, prompts, patching, max_new_bytes, compile=compile)
        else:
            state = Recompute(model, prompts, patching)
        active = list(range(len(rows)))  # prompt index of each row of ``state``
        start = list(state.patches) if report else []  # report needs the cache, whose rows count patches
        while True:
            if temperature == 0:
                tokens = state.logits.argmax(-1).tolist()
            else:
                logits = state.logits
                tokens = [
                    sample(logits[j], temperature, top_k, top_p, generators[i]) for j, i in enumerate(active)
                ]
            for i, token in zip(active, tokens):
                outputs[i].append(token)
            done = [stopped(outputs[i], stops) or len(outputs[i]) == max_new_bytes for i in active]
            going = [j for j, d in enumerate(done) if not d]
            if report:
                for j, i in enumerate(active):
                    closed[i] = state.patches[j] - start[i]
            if not going:
                break
            if len(going) < len(active):
                state.select(going)
                active, tokens = [active[j] for j in going], [tokens[j] for j in going]
            state.push(tokens)
    result = _outputs(outputs, kind)
    if report:
        return result, [row_report(model, r, o, c, patching) for r, o, c in zip(rows, outputs, closed)]
    return result


def stop_sequences(stop) -> dict[int, list[list[int]]]:
    """``generate``'s ``stop`` as id sequences by their last id (so that a step compares only the sequences
    its new id can end); empty sequences stop nothing."""
    if stop is None:
        stop = []
    elif isinstance(stop, (str, bytes, bytearray)):
        stop = [stop]
    elif not isinstance(stop, (list, tuple)):
        raise ValueError(f"stop must be bytes, str, a list of them or None, got {type(stop).__name__}")
    by_last: dict[int, list[list[int]]] = {}
    for item in stop:
        if isinstance(item, str):
            item = item.encode("utf-8")
        if not isinstance(item, (bytes, bytearray)):
            raise ValueError(f"each stop sequence must be bytes or str, got {type(item).__name__}: {item!r}")
        if item:
            ids = [b + OFFSET for b in item]
            by_last.setdefault(ids[-1], []).append(ids)
    return by_last


def stopped(output: list[int], stops: dict[int, list[list[int]]]) -> bool:
    """Whether a row's new ids ``output`` end with EOS or with a stop sequence."""
    last = output[-1]
    return last == EOS_ID or any(output[-len(s) :] == s for s in stops.get(last, ()))


def _outputs(outputs: list[list[int]], kind: str):
    if kind == "bytes":
        return decode(outputs[0])
    if kind == "list":
        return [decode(o) for o in outputs]
    tensors = [torch.tensor(o, dtype=torch.long) for o in outputs]
    return tensors[0] if kind == "tensor" else tensors
