"""Reading Betfair stream recordings from disk: plain, `.gz` and `.bz2`, files or folders.

A truncated or corrupt compressed file yields every line that could be decompressed, then
one `BadLine` saying where the file broke, instead of raising.
"""

from __future__ import annotations

import bz2
import gzip
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from operators.stream_messages import BadLine

NOT_STREAM_SUFFIXES = frozenset({".md", ".json", ".txt", ".csv", ".py"})
"""Skipped when expanding a folder (catalogues, notes); an explicit file is always read."""


def expand_paths(paths: list[str | Path]) -> list[Path]:
    """Files named directly, plus stream files found recursively in folders, sorted."""
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files.extend(
                p
                for p in sorted(path.rglob("*"))
                if p.is_file()
                and p.suffix.lower() not in NOT_STREAM_SUFFIXES
                and not p.name.startswith(".")
            )
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"no such file or folder: {path}")
    return files


def open_stream_file(path: Path) -> IO[bytes]:
    suffix = path.suffix.lower()
    if suffix == ".bz2":
        return bz2.open(path, "rb")
    if suffix == ".gz":
        return gzip.open(path, "rb")
    return path.open("rb")


def read_lines(path: Path, skip: int = 0) -> Iterator[tuple[int, bytes | BadLine]]:
    """Yield `(line_number, line)` from line `skip + 1` on; a broken file ends in a BadLine.

    Blank lines are skipped but keep their number, so positions match the file.
    """
    source = str(path)
    number = 0
    try:
        with open_stream_file(path) as handle:
            for number, line in enumerate(handle, start=1):
                if number <= skip:
                    continue
                line = line.rstrip(b"\r\n")
                if line.strip():
                    yield number, line
    except (EOFError, OSError, zlib.error) as error:
        reason = "truncated_compressed_file" if isinstance(error, EOFError) else "unreadable_file"
        yield number + 1, BadLine(source, number + 1, reason, str(error).encode())
