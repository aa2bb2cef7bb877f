"""The byte data pipeline: documents -> train/validation split -> cached id stream -> packed windows.

1. Documents come from :mod:`blt.data_sources` (the ``stdlib`` corpus, files, folders, globs, ``.jsonl``,
   ``.parquet``, hub datasets). Documents longer than ``max_doc_bytes`` are cut at line breaks into
   several documents, so that even a single large file splits into train and validation; the corpus is
   capped at ``max_bytes`` bytes (in source order).
2. Split: a document goes to validation iff ``blake2b(content, digest_size=8)``, read as a big-endian
   integer and divided by 2**64, is below ``val_fraction``. The split depends on nothing but the
   document's bytes (not its file name, position or the seed), so adding documents never moves others,
   and raising ``val_fraction`` only moves documents from train to validation.
3. Cache: each split is stored once as a flat ``uint16`` id stream, every document as BOS + (byte + 4)s +
   EOS (see :mod:`blt.tokenizer`), under ``<cache_dir>/data/<key>/``. The key hashes the source (each
   file's path, size and mtime), the text field and the split/cap settings, so changing any of them
   rebuilds. Later runs memory-map the stream, so corpora larger than memory work and the ``stdlib``
   corpus loads in a fraction of a second.
4. :class:`PackedBatches` cuts a split's stream into windows of ``seq_len + 1`` ids with stride
   ``seq_len`` (consecutive windows share one id, so every id after the first is a target exactly once;
   the last < ``seq_len`` ids of the stream are dropped), shards them over ranks and shuffles them per
   epoch with a seeded permutation.

Evaluation that must predict every byte exactly once uses :func:`iter_documents` instead, which yields
the split's documents whole (as bytes); the scorer cuts long documents into its own windows.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from numbers import Integral
from pathlib import Path
from typing import Any

import numpy as np
import torch

from blt.config import check, doc, to_dict
from blt.data_sources import STDLIB, source_documents, source_fingerprint
from blt.tokenizer import BOS_ID, EOS_ID, OFFSET, VOCAB_SIZE, check_ids

SPLITS = ("train", "val")
CACHE_VERSION = 2


@dataclass
class DataConfig:
    """Where the training bytes come from and how they are split, packed and batched."""

    source: str = doc(
        "'stdlib' (the Python standard library's .py files), a text file, a folder, a glob, a .jsonl or "
        ".parquet file, or a Hugging Face hub dataset name ('owner/name' or 'hf:name')",
        STDLIB,
    )
    text_field: str = doc("field holding the text in .jsonl / .parquet rows and hub datasets", "text")
    hub_subset: str | None = doc("configuration (subset) name of a hub dataset", None)
    seq_len: int = doc("ids per training window (inputs; each window holds seq_len + 1 ids)", 1024)
    batch_size: int = doc("windows per batch (per rank)", 8)
    val_fraction: float = doc("fraction of documents (by content hash) held out for validation", 0.01)
    max_bytes: int | None = doc("use only the first max_bytes bytes of the corpus (None: all of it)", None)
    max_doc_bytes: int | None = doc(
        "cut longer documents at line breaks into pieces of at most this many bytes (None: keep whole)", 65536
    )
    seed: int = doc("seed of the per-epoch shuffle of training windows", 0)
    cache_dir: str | None = doc(
        "where the id streams are cached (None: $BLT_CACHE_DIR or ~/.cache/blt)", None
    )

    def __post_init__(self) -> None:
        check(bool(self.source), "data.source must not be empty")
        check(bool(self.text_field), "data.text_field must not be empty")
        check(self.seq_len >= 2, f"data.seq_len must be at least 2, got {self.seq_len}")
        check(self.batch_size >= 1, f"data.batch_size must be at least 1, got {self.batch_size}")
        check(0.0 <= self.val_fraction < 1.0, f"data.val_fraction must be in [0, 1), got {self.val_fraction}")
        check(
            self.max_bytes is None or self.max_bytes > 0,
            f"data.max_bytes must be > 0 or None, got {self.max_bytes}",
        )
        check(
            self.max_doc_bytes is None or self.max_doc_bytes > 0,
            f"data.max_doc_bytes must be > 0 or None, got {self.max_doc_bytes}",
        )


# ----------------------------------------------------------------------------------------------------------
# documents and the split


def _cut(document: bytes, max_len: int | None) -> Iterator[bytes]:
    """Pieces of at most ``max_len`` bytes, each ending at a line break where there is one."""
    if max_len is None or len(document) <= max_len:
        yield document
        return
    start = 0
    while start < len(document):
        end = start + max_len
        if end < len(document):
            newline = document.rfind(b"\n", start, end)
            end = newline + 1 if newline >= start else end
        yield document[start:end]
        start = end


def corpus_documents(config: DataConfig, skipped: list[Path] | None = None) -> Iterator[bytes]:
    """Every non-empty document of the corpus in source order, cut and capped as configured (binary
    files skipped in a folder are appended to ``skipped``)."""
    budget = config.max_bytes
    for document in source_documents(config.source, config.text_field, config.hub_subset, skipped):
        for piece in _cut(document, config.max_doc_bytes):
            if not piece:
                continue
            if budget is not None:
                piece = piece[:budget]
                budget -= len(piece)
            yield piece
            if budget == 0:
                return


def in_validation(document: bytes, val_fraction: float) -> bool:
    """The split rule (module docstring): a hash of the content only, so it is stable and order-free."""
    h = int.from_bytes(hashlib.blake2b(document, digest_size=8).digest(), "big")
    return h < val_fraction * 2**64


# ----------------------------------------------------------------------------------------------------------
# the id-stream cache


def cache_root(config: DataConfig) -> Path:
    root = config.cache_dir or os.environ.get("BLT_CACHE_DIR") or "~/.cache/blt"
    return Path(root).expanduser() / "data"


def cache_key(config: DataConfig) -> str:
    """Hash of everything the cached id streams depend on (not seq_len, batch_size or seed)."""
    spec = {
        "version": CACHE_VERSION,
        "source": source_fingerprint(config.source, config.text_field, config.hub_subset),
        "val_fraction": config.val_fraction,
        "max_bytes": config.max_bytes,
        "max_doc_bytes": config.max_doc_bytes,
    }
    return hashlib.sha256(json.dumps(spec).encode()).hexdigest()[:20]


def _write_streams(config: DataConfig, folder: Path) -> dict[str, Any]:
    """Stream the corpus once into ``train.u16`` / ``val.u16``; returns the counts for ``meta.json``."""
    counts = {s: {"documents": 0, "bytes": 0} for s in SPLITS}
    digests = {s: hashlib.blake2b(digest_size=16) for s in SPLITS}
    skipped: list[Path] = []
    with open(folder / "train.u16", "wb") as train, open(folder / "val.u16", "wb") as val:
        for document in corpus_documents(config, skipped):
            split = "val" if in_validation(document, config.val_fraction) else "train"
            ids = np.empty(len(document) + 2, dtype=np.uint16)
            ids[0], ids[-1] = BOS_ID, EOS_ID
            ids[1:-1] = np.frombuffer(document, dtype=np.uint8)
            ids[1:-1] += OFFSET
            raw = ids.tobytes()
            (val if split == "val" else train).write(raw)
            digests[split].update(raw)
            counts[split]["documents"] += 1
            counts[split]["bytes"] += len(document)
    if counts["train"]["bytes"] + counts["val"]["bytes"] == 0:
        raise ValueError(f"data source {config.source!r} has no bytes: the corpus is empty{_skips(skipped)}")
    for split in SPLITS:  # content identity of a split, for loader states (independent of paths and mtimes)
        counts[split]["digest"] = digests[split].hexdigest()
    return counts


def _skips(skipped: list[Path]) -> str:
    """What an empty corpus left out: the binary files skipped in its folder, counted and named."""
    if not skipped:
        return ""
    names = ", ".join(str(p) for p in skipped[:3]) + (", ..." if len(skipped) > 3 else "")
    files = "file" if len(skipped) == 1 else "files"
    return (
        f" (skipped {len(skipped)} binary {files}, which hold a NUL byte in their first 8 KB: {names}; "
        "name a file directly to read it whatever it holds)"
    )


def build_cache(config: DataConfig) -> Path:
    """The cache folder of ``config``'s corpus, built on first use (atomically: safe with several ranks)."""
    root = cache_root(config)
    folder = root / cache_key(config)
    if (folder / "meta.json").is_file():
        return folder
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{folder.name}."))
    try:
        counts = _write_streams(config, tmp)
        meta = {"config": to_dict(config), "splits": counts}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
        try:
            tmp.rename(folder)
        except OSError:  # another process finished the same cache first; theirs is identical
            if not (folder / "meta.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def load_split(config: DataConfig, split: str = "train") -> np.ndarray:
    """The id stream of ``split`` as a read-only uint16 memmap (BOS + bytes + EOS per document)."""
    check(split in SPLITS, f"split must be one of {SPLITS}, got {split!r}")
    folder = build_cache(config)
    path = folder / f"{split}.u16"
    if path.stat().st_size == 0:
        if split == "val":
            hint = (
                "set data.val_fraction > 0"
                if config.val_fraction == 0
                else f"raise data.val_fraction (now {config.val_fraction}) or lower data.max_doc_bytes"
            )
            raise ValueError(f"the validation split of {config.source!r} is empty: {hint}")
        raise ValueError(
            f"the training split of {config.source!r} is empty (every document hashed into validation): "
            f"lower data.val_fraction (now {config.val_fraction}) or add documents"
        )
    return np.memmap(path, dtype=np.uint16, mode="r")


def split_counts(config: DataConfig, split: str) -> dict[str, int]:
    """``{"documents": n, "bytes": n}`` of ``split`` (bytes of text, without BOS/EOS)."""
    meta = json.loads((build_cache(config) / "meta.json").read_text())
    return {k: meta["splits"][split][k] for k in ("documents", "bytes")}


def iter_documents(config: DataConfig, split: str = "train") -> Iterator[bytes]:
    """The documents of ``split`` as raw bytes, in corpus order (for evaluation and tokenizer training).

    Deterministic, and the same split and bytes that :class:`PackedBatches` trains on.
    """
    ids = load_split(config, split)
    starts = np.flatnonzero(ids == BOS_ID)
    ends = np.append(starts[1:], len(ids))
    for start, end in zip(starts.tolist(), ends.tolist()):
        yield (ids[start + 1 : end - 1] - OFFSET).astype(np.uint8).tobytes()


# ----------------------------------------------------------------------------------------------------------
# packed batches


class PackedBatches(torch.utils.data.IterableDataset):
    """Batches of packed windows, LongTensor ``[batch_size, seq_len + 1]``: inputs ``[:, :-1]``, targets ``[:, 1:]``.

    Window ``w`` is ``ids[w * seq_len : w * seq_len + seq_len + 1]`` of the split's stream. Rank ``r`` of
    ``world_size`` owns windows ``r, r + world_size, ...`` (disjoint shards, equally many per rank so
    every rank runs the same number of steps). Each ``iter()`` yields the rest of the current epoch;
    training epochs visit the rank's windows in a permutation seeded by ``(seed, epoch)`` and drop the
    last incomplete batch; validation keeps corpus order and a smaller last batch, and every ``iter()``
    of it starts again at its first batch.

    The state is the number of batches yielded so far (over all epochs). A trainer that fetches batches
    ahead of use (Lightning prefetches one) should save the state of the batches it actually consumed.
    Batches are cheap memmap slices: use it without DataLoader workers (``num_workers=0``).
    """

    vocab_size: int | None = VOCAB_SIZE  # every batch's ids are checked against it (None: not checked)

    def __init__(
        self,
        config: DataConfig,
        split: str = "train",
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool | None = None,
        drop_last: bool | None = None,
    ):
        super().__init__()
        check(
            world_size >= 1 and 0 <= rank < world_size,
            f"need 0 <= rank < world_size, got {rank}, {world_size}",
        )
        self.config, self.split, self.rank, self.world_size = config, split, rank, world_size
        self.shuffle = split == "train" if shuffle is None else shuffle
        self.drop_last = split == "train" if drop_last is None else drop_last
        self.ids = load_split(config, split)
        meta = json.loads((Path(self.ids.filename).parent / "meta.json").read_text())
        self.digest = meta["splits"][split]["digest"]
        seq_len, batch_size = config.seq_len, config.batch_size
        self.windows_per_rank = (len(self.ids) - 1) // seq_len // world_size
        full, rest = divmod(self.windows_per_rank, batch_size)
        self.batches_per_epoch = full + (1 if rest and not self.drop_last else 0)
        if self.batches_per_epoch == 0:
            raise ValueError(
                f"the {split} split of {config.source!r} has {len(self.ids)} ids: {self.windows_per_rank} windows "
                f"of {seq_len + 1} ids per rank (world_size {world_size}), fewer than one batch of "
                f"{batch_size}; use more data"
                + (", a larger data.val_fraction" if split == "val" else "")
                + ", or a smaller data.seq_len / data.batch_size"
            )
        self.batch = 0
        self._order_epoch, self._order = -1, np.empty(0, dtype=np.int64)

    def __len__(self) -> int:
        """Batches per epoch."""
        return self.batches_per_epoch

    @property
    def epoch(self) -> int:
        return self.batch // self.batches_per_epoch

    def _windows(self, epoch: int) -> np.ndarray:
        """Global window indices of this rank, in the order epoch ``epoch`` visits them."""
        if epoch != self._order_epoch:
            local = np.arange(self.windows_per_rank)
            if self.shuffle:
                local = np.random.default_rng([self.config.seed, epoch]).permutation(local)
            self._order_epoch, self._order = epoch, self.rank + self.world_size * local
        return self._order

    def batch_at(self, index: int) -> torch.Tensor:
        """Batch number ``index`` (counted over all epochs), independent of the loader's position."""
        epoch, j = divmod(index, self.batches_per_epoch)
        b, n = self.config.batch_size, self.config.seq_len
        windows = self._windows(epoch)[j * b : (j + 1) * b]
        rows = np.stack([self.ids[w * n : w * n + n + 1] for w in windows.tolist()])
        # once per batch on the host: the models need not read ids back from a device
        if self.vocab_size is not None:
            check_ids(rows, self.vocab_size)
        return torch.from_numpy(rows.astype(np.int64))  # [batch_size, seq_len + 1]

    def __iter__(self) -> Iterator[torch.Tensor]:
        if self.split == "val":  # every evaluation is the same full pass, even after an interrupted one
            self.batch = 0
        end = (self.epoch + 1) * self.batches_per_epoch
        while self.batch < end:
            out = self.batch_at(self.batch)
            self.batch += 1
            yield out

    def _identity(self) -> dict[str, Any]:
        c = self.config
        return {
            "data": self.digest,
            "seq_len": c.seq_len,
            "batch_size": c.batch_size,
            "seed": c.seed,
            "world_size": self.world_size,
            "split": self.split,
            "shuffle": self.shuffle,
        }

    def state_dict(self) -> dict[str, Any]:
        return {"batch": self.batch, "epoch": self.epoch, **self._identity()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue after the batches counted in ``state``; refuse a state of another corpus or layout."""
        if "batch" not in state:
            raise ValueError("not a PackedBatches state: no 'batch' entry")
        batch = state["batch"]
        if isinstance(batch, bool) or not isinstance(batch, Integral) or batch < 0:
            raise ValueError(f"not a PackedBatches state: 'batch' must be an integer >= 0, got {batch!r}")
        for name, value in self._identity().items():
            if name in state and state[name] != value:
                raise ValueError(
                    f"cannot resume the data loader: the saved state has {name}={state[name]!r} but this run has "
                    f"{name}={value!r}" + (" (the split's content changed)" if name == "data" else "")
                )
        self.batch = int(batch)
