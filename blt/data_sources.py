"""Where documents come from: the stdlib corpus, local files, folders, globs, jsonl, parquet, the HF hub.

A *document* is a whole plain-text file, one row of a ``.jsonl`` file, or one row of a ``.parquet`` file
(or of a hub dataset), as raw bytes. Everything here yields documents in a fixed order (files sorted by
path, rows in file order) so the corpus built from them is deterministic.

The built-in corpus ``stdlib`` is every ``.py`` file of the running interpreter's standard library
(``sysconfig.get_paths()["stdlib"]``, about 30 MB, its ``test`` packages included), without
``site-packages`` / ``dist-packages`` (third-party code) and ``__pycache__``: real text nobody here wrote,
present on every machine.
"""

from __future__ import annotations

import glob
import json
import os
import re
import sysconfig
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

STDLIB = "stdlib"
ROW_SUFFIXES = (".jsonl", ".ndjson", ".parquet")
_SKIP_DIRS = {"site-packages", "dist-packages", "__pycache__"}
_FILE_LIKE = re.compile(r"\.(txt|md|py|jsonl|ndjson|json|parquet|csv|tsv|text|rst|html?)$", re.IGNORECASE)
_HUB_NAME = re.compile(r"^(hf:)?[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_HUB_PROBE_TIMEOUT = 5.0


def stdlib_files() -> list[Path]:
    """The ``.py`` files of this interpreter's standard library, sorted by path."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS)
        files += [Path(folder, n) for n in names if n.endswith(".py")]
    return sorted(files)


def is_hub_name(source: str) -> bool:
    """True for ``hf:name`` and for ``owner/name`` style sources that are not an existing local path."""
    if source.startswith("hf:"):
        return True
    if source == STDLIB or Path(source).expanduser().exists() or source.startswith(("/", ".", "~")):
        return False
    return bool(_HUB_NAME.match(source)) and not _FILE_LIKE.search(source)


def local_files(source: str) -> list[Path]:
    """The files behind a local ``source``: ``stdlib``, a file, a folder (recursively) or a glob."""
    if source == STDLIB:
        return stdlib_files()
    path = Path(source).expanduser()
    if path.exists():
        return _files_under(path)
    if any(c in source for c in "*?["):
        matches = sorted(Path(p) for p in glob.glob(os.path.expanduser(source), recursive=True))
        if not matches:
            raise ValueError(f"data source: no files match the glob {source!r}")
        return sorted({f for m in matches for f in _files_under(m)})
    raise ValueError(f"data source path does not exist: {source}")


def _files_under(path: Path) -> list[Path]:
    """``path`` itself if it is a file, else every non-hidden file below it, sorted."""
    if path.is_file():
        return [path]
    files = []
    for folder, dirs, names in os.walk(path):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        files += [Path(folder, n) for n in names if not n.startswith(".")]
    return sorted(files)


def file_documents(
    path: Path, text_field: str, in_folder: bool = False, skipped: list[Path] | None = None
) -> Iterator[bytes]:
    """Documents of one file: rows of ``.jsonl``/``.parquet``, else the whole file.

    Inside a folder or glob, files that look binary (a NUL byte in the first 8 KB) are skipped, so a
    folder of text with the odd image in it still works, and appended to ``skipped`` so an error about
    the corpus can name them; a file named directly is always read.
    """
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        yield from _jsonl_documents(path, text_field)
    elif suffix == ".parquet":
        yield from _parquet_documents(path, text_field)
    else:
        data = path.read_bytes()
        if not (in_folder and b"\0" in data[:8192]):
            yield data
        elif skipped is not None:
            skipped.append(path)


def _as_bytes(value: object, where: str, text_field: str) -> bytes:
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    raise ValueError(f"{where}: field {text_field!r} must hold text, got {type(value).__name__}")


def _jsonl_documents(path: Path, text_field: str) -> Iterator[bytes]:
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({e})") from None
            if not isinstance(row, dict) or text_field not in row:
                keys = sorted(row) if isinstance(row, dict) else type(row).__name__
                raise ValueError(
                    f"{path}:{lineno}: no text field {text_field!r} (found: {keys}); set data.text_field"
                )
            if row[text_field] is not None:
                yield _as_bytes(row[text_field], f"{path}:{lineno}", text_field)


def _parquet_documents(path: Path, text_field: str) -> Iterator[bytes]:
    import pyarrow.parquet as pq  # a dependency of `datasets`; imported here to keep `import blt.data` cheap

    try:
        table = pq.ParquetFile(path)
    except (OSError, ValueError) as e:  # pyarrow's ArrowIOError / ArrowInvalid for a damaged file
        raise ValueError(f"{path}: not a readable parquet file ({e})") from None
    columns = table.schema_arrow.names
    if text_field not in columns:
        raise ValueError(f"{path}: no text field {text_field!r} (columns: {columns}); set data.text_field")
    for batch in table.iter_batches(columns=[text_field], batch_size=1024):
        for value in batch.column(0).to_pylist():
            if value is not None:
                yield _as_bytes(value, str(path), text_field)


# ----------------------------------------------------------------------------------------------------------
# Hugging Face hub


def _offline_flag() -> str | None:
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        if os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on"):
            return name
    return None


def _probe_hub(name: str) -> None:
    """Fail fast (seconds, not minutes of retries) when the hub is unreachable or has no such dataset."""
    flag = _offline_flag()
    if flag:
        raise ValueError(
            f"data source {name!r} is not a local path, and the Hugging Face hub is offline ({flag} is set): "
            "cannot load it as a hub dataset"
        )
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    request = urllib.request.Request(f"{endpoint}/api/datasets/{name}", method="HEAD")
    try:
        urllib.request.urlopen(request, timeout=_HUB_PROBE_TIMEOUT).close()
    except urllib.error.HTTPError as e:
        if e.code == 404:
            raise ValueError(
                f"data source {name!r} is neither a local path nor a dataset on the hub"
            ) from None
        # 401/403: gated or private; the datasets library may still load it with the user's token
    except (urllib.error.URLError, OSError) as e:
        raise ValueError(
            f"data source {name!r} is not a local path, and the Hugging Face hub is unreachable ({e}): "
            "cannot load it as a hub dataset"
        ) from None


def hub_documents(source: str, subset: str | None, text_field: str) -> Iterator[bytes]:
    """Rows of the ``train`` split of a hub dataset, streamed (never downloaded whole)."""
    name = source.removeprefix("hf:")
    _probe_hub(name)
    import datasets  # slow to import; only hub sources need it

    try:
        rows = datasets.load_dataset(name, subset, split="train", streaming=True)
        for i, row in enumerate(rows):
            if text_field not in row:
                raise ValueError(
                    f"row {i} has no text field {text_field!r} (fields: {sorted(row)}); set data.text_field"
                )
            if row[text_field] is not None:
                yield _as_bytes(row[text_field], f"hub dataset {name!r} row {i}", text_field)
    except (OSError, ValueError) as e:  # network, not-found and format errors of the datasets library
        raise ValueError(f"could not load hub dataset {name!r}: {e}") from None


def source_documents(
    source: str, text_field: str, hub_subset: str | None = None, skipped: list[Path] | None = None
) -> Iterator[bytes]:
    """Every document of ``source`` in its fixed order (see the module docstring); binary files skipped
    inside a folder or glob are appended to ``skipped``."""
    if is_hub_name(source):
        yield from hub_documents(source, hub_subset, text_field)
        return
    files = local_files(source)
    in_folder = source == STDLIB or not Path(source).expanduser().is_file()
    for path in files:
        yield from file_documents(path, text_field, in_folder, skipped)


def source_fingerprint(source: str, text_field: str, hub_subset: str | None = None) -> list:
    """What the cached corpus of ``source`` depends on: path, size and mtime of each file (hub: its name)."""
    if is_hub_name(source):
        return ["hub", source.removeprefix("hf:"), hub_subset, text_field]
    out: list = [text_field]
    for path in local_files(source):
        st = path.stat()
        out.append([str(path.resolve()), st.st_size, st.st_mtime_ns])
    return out
