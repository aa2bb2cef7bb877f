"""Tokenized baseline: a SentencePiece BPE tokenizer that round-trips any bytes, and a CausalLM over it.

The tokenizer is trained with byte fallback and identity normalisation, no dummy prefix and no whitespace
clean-up, so text goes in exactly as written. Two things SentencePiece cannot represent are routed around
it, straight to its byte-fallback pieces ``<0x00>``..``<0xFF>``:

- bytes that are not valid UTF-8 (SentencePiece encodes Unicode text only), and
- the character U+2581 ``▁``, which SentencePiece uses internally for the space and would decode as one.

Decoding maps every piece back to its bytes (byte pieces to their byte, other pieces to their UTF-8 with
``▁`` read as a space), so ``decode(encode(b)) == b`` for every byte string ``b``.

Bits per byte of raw text are ``nll_bits(text) / len(bytes)``: the same unit as the byte-level models, so the
baseline and BLT compare directly.
"""

from __future__ import annotations

import dataclasses
import io
import itertools
import math
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import sentencepiece as spm
import torch
import torch.nn.functional as F

from blt.checkpoint import CheckpointError, atomic_write, load_pretrained, save_pretrained
from blt.config import BaselineConfig, check, doc
from blt.lm import CausalLM

KIND = "blt-baseline"
TOKENIZER_FILE = "tokenizer.model"
UNK_ID, BOS_ID, EOS_ID, PAD_ID = 0, 1, 2, 3
SPACE_PIECE = "\u2581"
# runs SentencePiece must not see: undecodable bytes (as surrogate escapes) and its own space symbol
_RAW_RUN = re.compile("[\udc80-\udcff\u2581]+")


@dataclass
class TokenizerConfig:
    """How the BPE tokenizer is trained (its vocabulary size is the baseline's ``vocab_size``)."""

    max_bytes: int = doc("training text fed to SentencePiece, in bytes (the rest is not read)", 20_000_000)
    sentence_bytes: int = doc(
        "training text is cut at line ends into pieces of at most this many bytes", 2048
    )
    max_piece_length: int = doc("longest piece in characters", 16)
    character_coverage: float = doc(
        "share of characters kept as pieces; the rarest fall back to bytes", 0.9995
    )

    def __post_init__(self) -> None:
        check(self.max_bytes > 0, f"tokenizer.max_bytes must be > 0, got {self.max_bytes}")
        check(self.sentence_bytes >= 16, f"tokenizer.sentence_bytes must be >= 16, got {self.sentence_bytes}")
        check(
            self.max_piece_length >= 1,
            f"tokenizer.max_piece_length must be >= 1, got {self.max_piece_length}",
        )
        check(
            0.0 < self.character_coverage <= 1.0,
            f"tokenizer.character_coverage must be in (0, 1], got {self.character_coverage}",
        )


@dataclass
class BaselineTrainConfig(BaselineConfig):
    """The ``baseline`` section of a config file: the model's shape plus how its tokenizer is trained."""

    tokenizer: TokenizerConfig = doc("BPE tokenizer training", default_factory=TokenizerConfig)


def _as_bytes(text: str | bytes) -> bytes:
    if isinstance(text, str):
        return text.encode("utf-8")
    if isinstance(text, (bytes, bytearray, memoryview)):
        return bytes(text)
    raise TypeError(f"expected str or bytes, got {type(text).__name__}")


def _cut(line: str, limit: int) -> list[str]:
    """``line`` in parts of at most ``limit`` UTF-8 bytes (a character takes at most 4)."""
    if len(line.encode()) <= limit:
        return [line]
    step = limit // 4
    return [line[i : i + step] for i in range(0, len(line), step)]


def _sentences(text: str, limit: int) -> Iterator[str]:
    """Consecutive lines of ``text`` packed into pieces of at most ``limit`` UTF-8 bytes."""
    chunk: list[str] = []
    size = 0
    for line in text.splitlines(keepends=True):
        for part in _cut(line, limit):
            n = len(part.encode())
            if chunk and size + n > limit:
                yield "".join(chunk)
                chunk, size = [], 0
            chunk.append(part)
            size += n
    if chunk:
        yield "".join(chunk)


def _training_sentences(texts: Iterable[str | bytes], config: TokenizerConfig) -> Iterator[str]:
    """At most ``max_bytes`` of valid UTF-8 training text, cut so SentencePiece keeps every sentence."""
    budget = config.max_bytes
    for text in texts:
        # invalid bytes are dropped here: they are always encoded as byte pieces anyway
        for sentence in _sentences(_as_bytes(text).decode("utf-8", errors="ignore"), config.sentence_bytes):
            yield sentence
            budget -= len(sentence.encode())
            if budget <= 0:
                return


class BPETokenizer:
    """SentencePiece BPE with byte fallback; ``decode(encode(b)) == b`` for any bytes ``b``."""

    def __init__(self, model_proto: bytes):
        self.model_proto = bytes(model_proto)
        self.sp = spm.SentencePieceProcessor(model_proto=self.model_proto)
        self.vocab_size = self.sp.get_piece_size()
        self.byte_ids = [self.sp.piece_to_id(f"<0x{b:02X}>") for b in range(256)]
        if any(self.sp.id_to_piece(i) != f"<0x{b:02X}>" for b, i in enumerate(self.byte_ids)):
            raise ValueError(
                "the SentencePiece model has no byte-fallback pieces; train it with byte_fallback"
            )
        if self.sp.is_unknown(self.sp.piece_to_id(SPACE_PIECE)):
            raise ValueError(
                "the SentencePiece model has no piece for the space; train it with BPETokenizer.train"
            )
        # bytes of every id; control ids (unk, BOS, EOS, pad) decode to nothing
        self.id_bytes = [self._piece_bytes(i) for i in range(self.vocab_size)]

    def _piece_bytes(self, i: int) -> bytes:
        if self.sp.is_control(i) or self.sp.is_unknown(i):
            return b""
        if self.sp.is_byte(i):
            return bytes([int(self.sp.id_to_piece(i)[3:5], 16)])
        return self.sp.id_to_piece(i).replace(SPACE_PIECE, " ").encode("utf-8")

    @classmethod
    def train(
        cls, texts: Iterable[str | bytes], vocab_size: int, config: TokenizerConfig | None = None
    ) -> BPETokenizer:
        """Train on ``texts``; the vocabulary may come out smaller than ``vocab_size`` on little text."""
        config = config or TokenizerConfig()
        check(
            vocab_size > 260,
            f"vocab_size must exceed 260 (256 byte pieces + 4 special ids), got {vocab_size}",
        )
        sentences = _training_sentences(texts, config)
        first = next(sentences, None)
        if first is None:
            raise ValueError("no training text for the BPE tokenizer (the corpus is empty)")
        model = io.BytesIO()
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=itertools.chain([first], sentences),
                model_writer=model,
                model_type="bpe",
                vocab_size=vocab_size,
                hard_vocab_limit=False,
                byte_fallback=True,
                normalization_rule_name="identity",
                add_dummy_prefix=False,
                remove_extra_whitespaces=False,
                allow_whitespace_only_pieces=True,
                # with no piece for the space, SentencePiece would byte-encode its symbol, not a space
                required_chars=SPACE_PIECE,
                split_digits=False,
                character_coverage=config.character_coverage,
                max_sentencepiece_length=config.max_piece_length,
                max_sentence_length=max(4192, config.sentence_bytes),
                unk_id=UNK_ID,
                bos_id=BOS_ID,
                eos_id=EOS_ID,
                pad_id=PAD_ID,
                num_threads=1,
                minloglevel=2,
            )
        except RuntimeError as e:
            raise ValueError(
                f"SentencePiece could not train a {vocab_size}-piece BPE vocabulary: {e}"
            ) from None
        return cls(model.getvalue())

    @classmethod
    def load(cls, path: str | Path) -> BPETokenizer:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"tokenizer model not found: {path}")
        try:
            return cls(path.read_bytes())
        except RuntimeError as e:
            raise ValueError(f"{path} is not a SentencePiece model: {e}") from None

    def save(self, path: str | Path) -> None:
        """Write the SentencePiece model atomically: a kill leaves the previous file or none, never half."""
        atomic_write(Path(path), lambda tmp: Path(tmp).write_bytes(self.model_proto))

    def encode(self, text: str | bytes, add_bos: bool = True, add_eos: bool = False) -> list[int]:
        """Token ids of ``text`` (str is UTF-8 encoded; bytes are used as they are)."""
        decoded = _as_bytes(text).decode("utf-8", errors="surrogateescape")
        ids = [BOS_ID] if add_bos else []
        pos = 0
        for raw in _RAW_RUN.finditer(decoded):
            ids += self.sp.encode(decoded[pos : raw.start()]) if raw.start() > pos else []
            ids += [self.byte_ids[b] for b in raw.group().encode("utf-8", errors="surrogateescape")]
            pos = raw.end()
        ids += self.sp.encode(decoded[pos:]) if pos < len(decoded) else []
        return ids + ([EOS_ID] if add_eos else [])

    def bytes_per_token(self, texts: Iterable[str | bytes]) -> float:
        """Mean bytes per token over ``texts`` (no BOS/EOS): the divisor of the tokenized FLOPs per byte."""
        n_bytes = n_tokens = 0
        for text in texts:
            n_bytes += len(_as_bytes(text))
            n_tokens += len(self.encode(text, add_bos=False))
        if n_tokens == 0:
            raise ValueError("bytes per token of an empty text is undefined")
        return n_bytes / n_tokens

    def decode(self, ids: Iterable[int] | torch.Tensor) -> bytes:
        """The bytes behind ``ids``; BOS, EOS and padding are dropped."""
        if isinstance(ids, torch.Tensor):
            ids = ids.reshape(-1).tolist()
        out = []
        for i in ids:
            if not 0 <= i < self.vocab_size:
                raise ValueError(f"token id {i} is outside the vocabulary 0..{self.vocab_size - 1}")
            out.append(self.id_bytes[i])
        return b"".join(out)


def train_tokenizer(
    texts: Iterable[str | bytes], vocab_size: int, config: TokenizerConfig | None = None
) -> BPETokenizer:
    """A BPE tokenizer trained on ``texts`` (see :class:`BPETokenizer`)."""
    return BPETokenizer.train(texts, vocab_size, config)


def _model_config(config: BaselineConfig, vocab_size: int) -> BaselineConfig:
    """Only the model's fields (no tokenizer section), with the tokenizer's actual vocabulary size."""
    fields = {f.name: getattr(config, f.name) for f in dataclasses.fields(BaselineConfig)}
    return BaselineConfig(**{**fields, "vocab_size": vocab_size})


class BaselineLM(CausalLM):
    """A Llama-style causal LM over the BPE vocabulary of its tokenizer.

    ``config.vocab_size`` is the vocabulary size asked of the tokenizer; the model uses the size the
    tokenizer actually has (smaller when the training text had fewer merges to offer).
    """

    def __init__(self, config: BaselineConfig, tokenizer: BPETokenizer, backend: str = "sdpa"):
        config = _model_config(config, tokenizer.vocab_size)
        super().__init__(config, tokenizer.vocab_size, backend)
        self.tokenizer = tokenizer

    def encode(self, text: str | bytes, add_bos: bool = True, add_eos: bool = False) -> list[int]:
        return self.tokenizer.encode(text, add_bos, add_eos)

    def decode(self, ids: Iterable[int] | torch.Tensor) -> bytes:
        return self.tokenizer.decode(ids)

    @torch.no_grad()
    def nll_bits(self, text: str | bytes, add_eos: bool = False) -> float:
        """Total negative log-likelihood in bits of every token of ``text`` after BOS (and EOS if asked).

        Long texts are scored in windows of ``max_seq_len`` predictions; each window starts with the last
        token of the previous one, so every token is predicted exactly once.
        """
        ids = torch.tensor(
            self.encode(text, add_bos=True, add_eos=add_eos), device=self.lm_head.weight.device
        )
        window = self.config.max_seq_len
        nats = 0.0
        for start in range(0, len(ids) - 1, window):
            chunk = ids[start : start + window + 1]
            logits = self(chunk[None, :-1])[0]
            nats += F.cross_entropy(logits, chunk[1:], reduction="sum").item()
        return nats / math.log(2)

    def bits_per_byte(self, text: str | bytes, add_eos: bool = False) -> float:
        """``nll_bits(text) / len(bytes)``: directly comparable with the byte-level models."""
        n_bytes = len(_as_bytes(text))
        if n_bytes == 0:
            raise ValueError("bits per byte of an empty text is undefined")
        return self.nll_bits(text, add_eos) / n_bytes

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write ``config.json`` (kind "blt-baseline"), ``model.safetensors`` and ``tokenizer.model``."""
        return save_pretrained(directory, self, KIND, files={TOKENIZER_FILE: self.tokenizer.model_proto})

    @classmethod
    def from_pretrained(cls, path: str | Path, backend: str = "sdpa") -> BaselineLM:
        """Load a directory written by :meth:`save_pretrained` (or its run directory), in eval mode."""
        build = lambda config, directory: cls(config, checkpoint_tokenizer(directory, config), backend)
        return load_pretrained(path, KIND, build)


def checkpoint_tokenizer(directory: Path, config: BaselineConfig) -> BPETokenizer:
    """The tokenizer saved beside a baseline's weights, which must have the vocabulary its config says."""
    if not (directory / TOKENIZER_FILE).is_file():
        raise CheckpointError(f"no {TOKENIZER_FILE} in baseline checkpoint {directory}")
    try:
        tokenizer = BPETokenizer.load(directory / TOKENIZER_FILE)
    except ValueError as e:
        raise CheckpointError(f"{directory}: {e}") from None
    if tokenizer.vocab_size != config.vocab_size:
        raise CheckpointError(
            f"{directory}: the tokenizer has {tokenizer.vocab_size} pieces, "
            f"the config says vocab_size {config.vocab_size}"
        )
    return tokenizer
