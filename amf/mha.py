"""Reading MetaImage (`.mha`) stacks page by page, with every limit checked from the header.

grand-challenge turns uploads into `.mha`; SimpleITK writes the same layout. This reader accepts
only what a crop stack needs: pixel data inside the file (`ElementDataFile = LOCAL`: a header
that names another file is refused, so nothing outside the input is read), 2-D or 3-D, 1–4
channels, raw or zlib-compressed. Pages (the z slices of a 3-D image) are decoded one at a time
from a stream, so memory stays bounded whatever the header claims.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from amf.errors import InputError

MAX_HEADER_BYTES = 64 * 1024
_CHUNK = 1 << 20
_ELEMENT_TYPES = {
    "MET_UCHAR": "u1",
    "MET_CHAR": "i1",
    "MET_USHORT": "u2",
    "MET_SHORT": "i2",
    "MET_UINT": "u4",
    "MET_INT": "i4",
    "MET_FLOAT": "f4",
    "MET_DOUBLE": "f8",
}


@dataclass(frozen=True)
class Header:
    """What the header promises: page size, page count, channels, element type, where data starts."""

    width: int
    height: int
    pages: int
    channels: int
    dtype: np.dtype
    compressed: bool
    data_offset: int

    @property
    def page_bytes(self) -> int:
        return self.width * self.height * self.channels * self.dtype.itemsize


def read_header(path: Path) -> Header:
    """Parse and check the text header; raises InputError naming the file and the field."""
    with open(path, "rb") as handle:
        head = handle.read(MAX_HEADER_BYTES)
    fields: dict[str, str] = {}
    offset = 0
    for raw in head.splitlines(keepends=True):
        offset += len(raw)
        key, sep, value = raw.decode("latin-1").partition("=")
        if not sep:
            raise InputError(f"{path}: not a MetaImage header (line {raw[:40]!r})")
        fields[key.strip()] = value.strip()
        if key.strip() == "ElementDataFile":
            break
    else:
        raise InputError(f"{path}: no ElementDataFile line in the first {MAX_HEADER_BYTES} bytes")
    return _header(path, fields, offset)


def _header(path: Path, fields: dict[str, str], offset: int) -> Header:
    if fields["ElementDataFile"] != "LOCAL":
        raise InputError(
            f"{path}: pixel data in another file (ElementDataFile = {fields['ElementDataFile']!r}) "
            "is not read; save the .mha with its data inside (LOCAL)"
        )
    if fields.get("ObjectType", "Image") != "Image" or fields.get("BinaryData", "True") != "True":
        raise InputError(f"{path}: only binary MetaImage images are read")
    element = fields.get("ElementType", "")
    if element not in _ELEMENT_TYPES:
        raise InputError(f"{path}: ElementType {element!r} is not one of {sorted(_ELEMENT_TYPES)}")
    msb = fields.get("BinaryDataByteOrderMSB", fields.get("ElementByteOrderMSB", "False")) == "True"
    dtype = np.dtype(_ELEMENT_TYPES[element]).newbyteorder(">" if msb else "<")
    sizes = _integers(path, fields, "DimSize")
    channels = _integers(path, fields, "ElementNumberOfChannels", "1")
    if len(sizes) not in (2, 3) or min(sizes) < 1:
        raise InputError(f"{path}: DimSize must be 2 or 3 positive sizes, got {sizes}")
    if len(channels) != 1 or not 1 <= channels[0] <= 4:
        raise InputError(f"{path}: ElementNumberOfChannels must be 1-4, got {channels}")
    if len(sizes) == 3 and channels[0] == 1 and sizes[0] in (3, 4):
        raise InputError(
            f"{path}: a 3-D gray image {sizes[0]} pixels wide looks like one RGB crop saved without "
            "channels; save it with ElementNumberOfChannels (SimpleITK: isVector=True)"
        )
    pages = sizes[2] if len(sizes) == 3 else 1
    compressed = fields.get("CompressedData", "False") == "True"
    return Header(sizes[0], sizes[1], pages, channels[0], dtype, compressed, offset)


def _integers(path: Path, fields: dict[str, str], key: str, default: str | None = None) -> list[int]:
    text = fields.get(key, default)
    if text is None:
        raise InputError(f"{path}: header has no {key}")
    try:
        return [int(value) for value in text.split()]
    except ValueError:
        raise InputError(f"{path}: {key} must be integers, got {text[:40]!r}") from None


def iter_pages(path: Path, header: Header) -> Iterator[np.ndarray]:
    """Each page as (H, W, channels) of the header's type, decoded from a stream one at a time."""
    with open(path, "rb") as handle:
        handle.seek(header.data_offset)
        chunks = _inflated(handle, header.page_bytes) if header.compressed else _raw(handle)
        buffer = bytearray()
        for index in range(header.pages):
            while len(buffer) < header.page_bytes:
                chunk = next(chunks, b"")
                if not chunk:
                    raise InputError(f"{path}: pixel data ends in page {index} of {header.pages}")
                buffer += chunk
            page = np.frombuffer(
                buffer, dtype=header.dtype, count=header.page_bytes // header.dtype.itemsize
            ).copy()
            del buffer[: header.page_bytes]
            yield page.reshape(header.height, header.width, header.channels)


def _raw(handle) -> Iterator[bytes]:
    while chunk := handle.read(_CHUNK):
        yield chunk


def _inflated(handle, page_bytes: int) -> Iterator[bytes]:
    """zlib (or gzip) data inflated at most one page at a time: a small file cannot flood memory."""
    inflater = zlib.decompressobj(47)  # 32 + 15: either header
    limit = max(page_bytes, _CHUNK)
    pending = b""
    while True:
        if not pending:
            pending = handle.read(_CHUNK)
            if not pending:
                tail = inflater.flush()
                if tail:
                    yield tail
                return
        try:
            out = inflater.decompress(pending, limit)
        except zlib.error as error:
            raise InputError(f"{handle.name}: corrupt compressed pixel data ({error})") from None
        pending = inflater.unconsumed_tail
        if out:
            yield out
        if inflater.eof:
            return
