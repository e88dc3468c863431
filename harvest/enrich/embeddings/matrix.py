"""Where vectors are kept: an N×dimensions float32 `.npy` matrix, rows in `standardized.jsonl` order, written
row by row (EmbeddingMatrix) and read forward from a stream (EmbeddingStream)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import IO, BinaryIO

import numpy as np
from numpy.lib.format import (
    read_array_header_1_0,
    read_array_header_2_0,
    read_magic,
    write_array_header_1_0,
)

from harvest.enrich.embeddings.api import check_vector
from harvest.enrich.embeddings.batch import EmbeddingRow


class EmbeddingMatrix:
    """An N×dimensions float32 ``.npy`` file (format 1.0, C order), written row by row with positioned writes.

    Rows are activities in file order (4·dimensions bytes each). Missing rows are flagged as NaN rows: once
    the matrix is closed, every row never written is NaN, and :meth:`write` only accepts finite vectors, so a
    row is missing exactly when its first value is NaN (:attr:`missing` says so without reading the file
    back). One file, no side mask to keep in sync. A new file is sized at once
    (sparse) and only the rows still missing at :meth:`close` are written as NaN: an unchanged re-run, whose
    rows are all reused, writes each row once instead of NaN first and the vector over it.

    The file is written with ``os.pwrite``, not through a memory map: dirty pages of a map count towards the
    process's resident memory until they are written back, so a 50,000-row matrix (300 MB) would have
    grown it by that much. Memory here is the NaN fill chunk plus one bool per row.
    """

    def __init__(self, path: Path, rows: int, dimensions: int, *, fill_chunk_rows: int = 1024) -> None:
        if rows < 0 or dimensions < 1:
            raise ValueError(f"bad matrix shape {rows}×{dimensions}")
        self.path = Path(path)
        self.rows, self.dimensions = rows, dimensions
        self._row_bytes = 4 * dimensions
        self._present = np.zeros(rows, dtype=bool)
        self._file: BinaryIO | None = open(self.path, "wb+")  # noqa: SIM115 - closed in close()
        try:
            header = {"descr": "<f4", "fortran_order": False, "shape": (rows, dimensions)}
            write_array_header_1_0(self._file, header)
            self._offset = self._file.tell()
            self._file.flush()
            os.ftruncate(self._file.fileno(), self._offset + rows * self._row_bytes)
        except BaseException:
            self.close()
            raise
        self._fill_chunk_rows = max(1, fill_chunk_rows)
        self._unfilled = True  # rows never written are zeros until close() writes them as NaN
        self.written = 0

    @classmethod
    def reopen(cls, path: Path) -> EmbeddingMatrix:
        """Open a matrix written earlier (a run's prefilled vectors) to fill in more rows; NaN rows are missing."""
        self = cls.__new__(cls)
        self.path = Path(path)
        self._file = open(self.path, "rb+")  # noqa: SIM115 - closed in close()
        try:
            shape, fortran_order, dtype = _read_array_header(self._file, read_magic(self._file))
            if len(shape) != 2 or fortran_order or dtype != np.dtype("<f4"):
                raise ValueError(f"{self.path}: not a C-order float32 matrix ({shape}, {dtype})")
            self.rows, self.dimensions = int(shape[0]), int(shape[1])
            self._row_bytes = 4 * self.dimensions
            self._offset = self._file.tell()
            # A row is present when its first value is a number: one float read per row, not the matrix.
            fd = self._file.fileno()
            firsts = [os.pread(fd, 4, self._offset + row * self._row_bytes) for row in range(self.rows)]
            self._present = ~np.isnan(np.frombuffer(b"".join(firsts), dtype="<f4")) if firsts else np.zeros(0, bool)
        except BaseException:
            self.close()
            raise
        self._fill_chunk_rows = 1024
        self._unfilled = False  # a closed matrix: its missing rows are NaN already
        self.written = int(self._present.sum())
        return self

    def write(self, row: int, vector: np.ndarray) -> None:
        """Store one activity's vector; raises ValueError for a wrong shape or non-finite values."""
        if self._file is None:
            raise ValueError(f"{self.path} is closed")
        vector = np.asarray(vector, dtype=np.float32)
        problem = check_vector(vector, self.dimensions)
        if problem:
            raise ValueError(f"row {row}: {problem}")
        if not 0 <= row < self.rows:
            raise IndexError(f"row {row} outside 0..{self.rows - 1}")
        os.pwrite(self._file.fileno(), vector.astype("<f4").tobytes(), self._offset + row * self._row_bytes)
        self._present[row] = True
        self.written += 1

    def write_many(self, items: list[tuple[int, np.ndarray | list[float]]]) -> dict[int, str]:
        """`write` for several (row, vector) pairs, validated together and written in runs of consecutive rows
        (per-row checks and writes were most of an unchanged re-run's embeddings stage). Returns {index in
        `items`: why that vector was refused}; the others are written."""
        if self._file is None:
            raise ValueError(f"{self.path} is closed")
        refused: dict[int, str] = {}
        kept: list[tuple[int, int, np.ndarray]] = []  # (row, index in items, vector)
        for index, (row, value) in enumerate(items):
            vector = np.asarray(value, dtype="<f4")
            if vector.shape != (self.dimensions,):
                refused[index] = f"row {row}: wrong dimension {vector.size} (expected {self.dimensions})"
            elif not 0 <= row < self.rows:
                refused[index] = f"row {row} outside 0..{self.rows - 1}"
            else:
                kept.append((row, index, vector))
        if kept:
            finite = np.isfinite(np.stack([vector for _, _, vector in kept])).all(axis=1)
            for (row, index, _), ok in zip(kept, finite):
                if not ok:
                    refused[index] = f"row {row}: vector has non-finite values"
            kept = sorted((item for item, ok in zip(kept, finite) if ok), key=lambda item: item[0])
        start = 0
        for end in range(1, len(kept) + 1):  # each run of consecutive rows in one positioned write
            if end < len(kept) and kept[end][0] == kept[end - 1][0] + 1:
                continue
            run = kept[start:end]
            os.pwrite(self._file.fileno(), b"".join(vector.tobytes() for _, _, vector in run),
                      self._offset + run[0][0] * self._row_bytes)
            self._present[[row for row, _, _ in run]] = True
            self.written += len(run)
            start = end
        return refused

    @property
    def missing(self) -> np.ndarray:
        """Boolean mask of rows never written (the NaN rows of the file)."""
        return ~self._present

    def write_rows(self, results: Iterable[EmbeddingRow], row_of: Mapping[str, int]) -> dict[str, str]:
        """Write batch rows by custom_id → row; returns {custom_id or "line…": error} for every row not written."""
        failures: dict[str, str] = {}
        for number, item in enumerate(results):
            key = item.custom_id or f"unidentified line {number}"
            if item.vector is None:
                failures[key] = item.error or "no vector"
                continue
            row = row_of.get(item.custom_id) if item.custom_id is not None else None
            if row is None:
                failures[key] = "custom_id not in this run"
                continue
            try:
                self.write(row, item.vector)
            except (ValueError, IndexError) as exc:
                failures[key] = str(exc)
        return failures

    def close(self) -> None:
        """Write the rows still missing as NaN (see the class), then close the file."""
        if self._file is not None:
            try:
                if self._unfilled:
                    self._fill_missing()
            finally:
                self._file.close()
                self._file = None

    def _fill_missing(self) -> None:
        """NaN into each run of rows never written, a chunk at a time: never a whole N×D array in memory."""
        assert self._file is not None
        missing = np.flatnonzero(~self._present)
        if missing.size == 0:
            return
        nan_rows = np.full((min(missing.size, self._fill_chunk_rows), self.dimensions), np.nan, dtype="<f4").tobytes()
        breaks = np.flatnonzero(np.diff(missing) != 1) + 1  # runs of consecutive missing rows
        fd = self._file.fileno()
        for run in np.split(missing, breaks):
            for start in range(int(run[0]), int(run[-1]) + 1, self._fill_chunk_rows):
                count = min(self._fill_chunk_rows, int(run[-1]) + 1 - start)
                os.pwrite(fd, nan_rows[: count * self._row_bytes], self._offset + start * self._row_bytes)
        self._unfilled = False

    def __enter__(self) -> EmbeddingMatrix:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class EmbeddingStream:
    """Rows of an embeddings ``.npy`` read forward from a stream (a stored object's body), one chunk at a time.

    The final writer asks for rows in file order (the merge's order is `standardized.jsonl`'s, which is the
    matrix's), so it needs no local copy: the download overlaps the writing instead of coming before it, and
    resident memory stays one chunk. A row before the current chunk is an error (the caller is out of order).

    ``with EmbeddingStream(handle) as rows: rows.row(i)`` → a float32 vector (a copy, safe to keep).
    """

    def __init__(self, handle: IO[bytes], *, chunk_rows: int = 512, name: str = "embeddings") -> None:
        self._handle: IO[bytes] | None = handle
        self.name = name
        try:
            shape, fortran_order, dtype = _read_array_header(handle, read_magic(handle))
        except BaseException:
            self.close()
            raise
        if len(shape) != 2 or fortran_order or dtype != np.dtype("<f4"):
            self.close()
            raise ValueError(f"{name}: not a C-order float32 matrix ({shape}, {dtype}, fortran={fortran_order})")
        self.rows, self.dimensions = int(shape[0]), int(shape[1])
        self._row_bytes = 4 * self.dimensions
        self._chunk_rows = max(1, chunk_rows)
        self._start = 0  # first row of the current chunk; rows before it are gone
        self._chunk = np.empty((0, self.dimensions), dtype="<f4")

    def row(self, index: int) -> np.ndarray:
        if self._handle is None:
            raise ValueError(f"{self.name} is closed")
        if not 0 <= index < self.rows:
            raise IndexError(f"row {index} outside 0..{self.rows - 1}")
        if index < self._start:
            raise ValueError(f"{self.name}: row {index} asked after row {self._start} (rows are read forward only)")
        while index >= self._start + len(self._chunk):
            self._start += len(self._chunk)
            count = min(self._chunk_rows, self.rows - self._start)
            data = _read_exactly(self._handle, count * self._row_bytes)
            if len(data) != count * self._row_bytes:
                raise ValueError(f"{self.name} is truncated at row {self._start + len(data) // self._row_bytes}")
            self._chunk = np.frombuffer(data, dtype="<f4").reshape(count, self.dimensions)
        return self._chunk[index - self._start].copy()

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def __enter__(self) -> EmbeddingStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _read_exactly(handle: IO[bytes], size: int) -> bytes:
    """`size` bytes, or fewer only at the end of the stream (a socket may hand them over in pieces)."""
    parts: list[bytes] = []
    wanted = size
    while wanted > 0:
        piece = handle.read(wanted)
        if not piece:
            break
        parts.append(piece)
        wanted -= len(piece)
    return b"".join(parts)


def _read_array_header(handle: IO[bytes], version: tuple[int, int]) -> tuple[tuple[int, ...], bool, np.dtype]:
    if version == (1, 0):
        return read_array_header_1_0(handle)
    if version == (2, 0):
        return read_array_header_2_0(handle)
    raise ValueError(f"unsupported .npy format version {version}")
