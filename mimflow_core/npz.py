"""Reading numpy ``.npz`` files that anyone could have written, without trusting what they say about themselves.

An npz is a zip of ``.npy`` members, each a header (dtype, shape) and raw
bytes. A truncated download, a forged header that declares 10^12 rows, an
object array (numpy would unpickle it) or a zip whose directory lies about a
member's size must each become one :class:`MIMFlowError` line naming the file,
checked before anything is allocated; the reader also streams a member a
batch of rows at a time (a 50k x 256^2 image batch is 9.8 GB).
"""
from __future__ import annotations

import contextlib
import math
import os
import tokenize
import zipfile
import zlib
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from mimflow_core.errors import MIMFlowError

# what reading damaged bytes raises: the zip layer (bad CRC, deflate stream), numpy's header parser (it tokenizes
# the header as Python literals: SyntaxError, TokenError, UnicodeDecodeError), a short read
READ_ERRORS = (zipfile.BadZipFile, zlib.error, OSError, EOFError, ValueError, SyntaxError, tokenize.TokenError)
MAX_EXPANSION = {zipfile.ZIP_STORED: 1, zipfile.ZIP_DEFLATED: 1032}  # deflate's largest output per input byte


def open_zip(path: Path) -> zipfile.ZipFile:
    """The npz as a zip archive, or one line saying why it is not one."""
    if not path.is_file():
        raise MIMFlowError(f"{path}: no such file")
    try:
        return zipfile.ZipFile(path)
    except zipfile.BadZipFile:  # no end-of-archive directory: the file was cut short, or is no zip at all
        raise MIMFlowError(f"{path}: not an npz file, or a truncated one (no zip directory at its end)") from None
    except READ_ERRORS as e:
        raise corrupt(path, e) from None


def corrupt(path: Path, error: Exception) -> MIMFlowError:
    reason = str(error).splitlines()[0][:160] if str(error) else type(error).__name__
    return MIMFlowError(f"{path}: corrupt npz ({reason})")


def array_names(path: str | os.PathLike) -> list[str]:
    """The names of the arrays an npz holds (its ``.npy`` members)."""
    with open_zip(Path(path)) as z:
        return [n.removesuffix(".npy") for n in z.namelist() if n.endswith(".npy")]


class NpzArrayReader:
    """One array of an npz file, read in row batches without loading it whole."""

    def __init__(self, path: str | os.PathLike, name: str = "arr_0"):
        self.path, self.name = Path(path), name
        self._zip = open_zip(self.path)
        try:
            self._open(name)
        except READ_ERRORS as e:
            self.close()
            raise corrupt(self.path, e) from None
        except MIMFlowError:
            self.close()
            raise
        self._rows_read = 0

    def _open(self, name: str) -> None:
        """Open the member and read its .npy header, refusing one that declares more bytes than it holds."""
        member = f"{name}.npy"
        if member not in self._zip.namelist():
            keys = sorted(n.removesuffix(".npy") for n in self._zip.namelist())
            raise MIMFlowError(f"{self.path}: no '{name}' array (has {keys}); ADM batches store images as arr_0")
        self._file = self._zip.open(member)
        version = np.lib.format.read_magic(self._file)
        read_header = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
        if version not in read_header:
            raise MIMFlowError(f"{self.path}: {name} uses .npy format {version}, which cannot be streamed")
        self.shape, fortran_order, self.dtype = read_header[version](self._file)
        if self.dtype.hasobject:
            raise MIMFlowError(f"{self.path}: {name} holds Python objects (dtype object), which are never unpickled; "
                               "store numbers or fixed-width strings")
        if fortran_order:
            raise MIMFlowError(f"{self.path}: {name} is Fortran-ordered; save np.ascontiguousarray(x) with np.savez")
        declared = math.prod(self.shape) * self.dtype.itemsize
        info = self._zip.getinfo(member)
        # the zip's own size field is as forgeable as the header: bound it by the bytes on disk, which deflate can
        # expand at most 1032-fold
        on_disk = min(info.compress_size, self.path.stat().st_size)
        stored = min(info.file_size, on_disk * MAX_EXPANSION.get(info.compress_type, 1)) - self._file.tell()
        if declared != stored:  # checked before any allocation: a forged header cannot ask for terabytes
            raise MIMFlowError(f"{self.path}: {name} declares shape {self.shape} of {self.dtype} ({declared} bytes) "
                               f"but holds {stored} bytes; the file is truncated or corrupt")

    def __len__(self) -> int:
        return self.shape[0] if self.shape else 0

    def read(self, rows: int) -> np.ndarray:
        """The next ``rows`` rows (fewer at the end; empty when exhausted)."""
        rows = min(rows, len(self) - self._rows_read)
        batch = self._fill(np.empty((rows, *self.shape[1:]), dtype=self.dtype), f"at row {self._rows_read}")
        self._rows_read += rows
        return batch

    def read_all(self) -> np.ndarray:
        """The whole array (0-d included): for the small arrays beside the images."""
        return self._fill(np.empty(self.shape, dtype=self.dtype), "")

    def _fill(self, array: np.ndarray, where: str) -> np.ndarray:
        """Read the member's next ``array.nbytes`` bytes into ``array``; a short or damaged member is one line."""
        try:
            complete = self._file.readinto(memoryview(array.reshape(-1)).cast("B")) == array.nbytes
        except READ_ERRORS as e:  # a bad CRC or deflate stream
            raise corrupt(self.path, e) from None
        if not complete:
            raise MIMFlowError(f"{self.path}: {self.name} is truncated{' ' + where if where else ''}")
        return array

    def batches(self, batch_size: int) -> Iterator[np.ndarray]:
        while self._rows_read < len(self):
            yield self.read(batch_size)

    def close(self) -> None:
        with contextlib.suppress(AttributeError):
            self._file.close()
        with contextlib.suppress(AttributeError):
            self._zip.close()

    def __enter__(self) -> "NpzArrayReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def load_npz(path: str | os.PathLike, names: Iterable[str] | None = None) -> dict[str, np.ndarray]:
    """The arrays ``names`` (default: all) of an npz that are present, each checked before it is read: a truncated
    or forged file, or an object array, is one :class:`MIMFlowError` line instead of numpy's traceback."""
    present = array_names(path)
    wanted = present if names is None else [n for n in names if n in present]
    arrays = {}
    for name in wanted:
        with NpzArrayReader(path, name) as reader:
            arrays[name] = reader.read_all()
    return arrays
