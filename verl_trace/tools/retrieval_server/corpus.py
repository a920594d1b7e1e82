"""A passage corpus in the Search-R1 JSONL form, memory-mapped so 1M+ passages stay cheap.

One passage per line: ``{"id": ..., "contents": "\\"Title\\"\\ntext"}`` (other keys are kept and
returned as part of the document). Only the byte offset of each line is held in memory; a
document is parsed from the mapped file when it is returned, so the server's resident memory
does not grow with the text of the corpus.
"""

from __future__ import annotations

import hashlib
import json
import mmap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from tqdm import tqdm

_CHUNK = 1 << 22


class CorpusError(ValueError):
    """A corpus file that cannot be served; the message names the file, line and field."""


def parse_passage(line: bytes | str, where: str) -> dict:
    """Parse and check one corpus line; ``where`` (``path:lineno``) goes into the error."""
    try:
        doc = json.loads(line)
    except json.JSONDecodeError as exc:
        raise CorpusError(f"{where}: not valid JSON ({exc.msg})") from None
    if not isinstance(doc, dict):
        raise CorpusError(f"{where}: expected a JSON object, got {type(doc).__name__}")
    if "id" not in doc:
        raise CorpusError(f"{where}: field 'id' is missing")
    if not isinstance(doc.get("contents"), str):
        raise CorpusError(f"{where}: field 'contents' must be a string")
    return doc


def split_title(contents: str) -> tuple[str, str]:
    """Split Search-R1 ``contents`` into (title, text): the first line is the (quoted) title."""
    title, _, text = contents.partition("\n")
    return title.strip().strip('"'), text.strip()


def fingerprint(path: str | Path) -> str:
    """A content hash of the corpus file, stored with a saved index to detect a changed corpus."""
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class Corpus:
    """Random access to the passages of a JSONL corpus by row number (the index's doc id)."""

    def __init__(self, path: str | Path, offsets: np.ndarray):
        self.path = Path(path)
        self._offsets = offsets
        self._file = open(self.path, "rb")
        self._map = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)

    @classmethod
    def open(cls, path: str | Path, validate: bool = True, progress: bool = True) -> Corpus:
        """Scan ``path`` for line offsets (skipping blank lines); ``validate`` parses every line."""
        path = Path(path)
        if not path.is_file():
            raise CorpusError(f"corpus file not found: {path}")
        size = path.stat().st_size
        if size == 0:
            raise CorpusError(f"{path}: corpus is empty")
        offsets: list[int] = []
        pos = 0
        with open(path, "rb") as fh, tqdm(total=size, unit="B", unit_scale=True, desc=f"scan {path.name}",
                                          disable=not progress, leave=False) as bar:
            for lineno, line in enumerate(fh, start=1):
                if line.strip():
                    if validate:
                        parse_passage(line, f"{path}:{lineno}")
                    offsets.append(pos)
                pos += len(line)
                bar.update(len(line))
        if not offsets:
            raise CorpusError(f"{path}: corpus has no passages")
        return cls(path, np.asarray(offsets, dtype=np.int64))

    def __len__(self) -> int:
        return len(self._offsets)

    def _line(self, row: int) -> bytes:
        start = int(self._offsets[row])
        end = self._map.find(b"\n", start)
        return self._map[start : end if end >= 0 else len(self._map)]

    def __getitem__(self, row: int) -> dict:
        return json.loads(self._line(row))

    def contents(self, progress: bool = True, desc: str = "read passages") -> Iterator[str]:
        """Yield the ``contents`` of every passage in row order (for index building)."""
        for row in tqdm(range(len(self)), desc=desc, disable=not progress, unit="doc"):
            yield self[row]["contents"]

    def close(self) -> None:
        self._map.close()
        self._file.close()
