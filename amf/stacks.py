"""Finding the input and reading its crops as RGB uint8 pages, one page at a time.

Three input layouts are accepted:

- grand-challenge: `inputs.json` plus one stack in `images/stacked-histopathology-roi-cropouts/`;
- a single stack or crop file (`.tif`, `.tiff`, `.mha`, `.png`, `.jpg`, ...);
- a plain folder of crop files, searched recursively.

Every input is treated as hostile: only regular files whose real path lies inside the input
folder are read, Pillow may identify only PNG, JPEG, TIFF and BMP (no format that starts another
program), and page size and count are checked from the header before a page is decoded. Pillow
decodes every page except deflate and LZMA TIFF pages of common kinds, which tifffile reads (see
_TIFFFILE_COMPRESSIONS); libtiff, which decodes Pillow's other compressed TIFF pages, is handed
the one page alone (_one_page_tiff). Every page, whatever its pixel format, leaves this module as
an (H, W, 3) uint8 array.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import struct
import warnings
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

import numpy as np
import tifffile
from PIL import Image

from amf import mha
from amf.errors import InputError
from amf.manifest import InputSpec
from amf.preprocess import resize_image

SLUG = "stacked-histopathology-roi-cropouts"
STACK_SUFFIXES = (".tif", ".tiff", ".mha")
CROP_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".mha")
PILLOW_FORMATS = ("PNG", "JPEG", "TIFF", "BMP")  # decoded in-process; EPS & co. would run programs
MAX_PAGE_PIXELS = 4096 * 4096  # per page; a crop is 128 x 128
MAX_PAGES = 20_000  # per file
MAX_PAGE_BYTES = 256 << 20  # one decoded .mha page (Pillow's widest mode at the pixel limit: 64 MiB)
MAX_INPUTS_JSON_BYTES = 1 << 20
# Pillow modes of 8- or 16-bit unsigned samples (bilevel and palette included): every value maps
# into 0-255, so no page of theirs can fail a value check.
_IN_RANGE_MODES = frozenset(
    ("1", "L", "P", "LA", "PA", "La", "RGB", "RGBA", "RGBX", "RGBa", "CMYK", "YCbCr", "LAB", "HSV")
    + ("I;16", "I;16B", "I;16L", "I;16N")
)
_CONVERT_TO_RGB = ("1", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV", "RGBX", "RGBa", "La")
# 8-bit modes a large page is resized in as it is decoded (iter_pages `shrink_to`), alpha dropped
# first as to_rgb_uint8 drops it (Pillow would resize RGBA and LA premultiplied); pages of more
# pixels than SHRINK_ABOVE only: a crop keeps its full size for the report's thumbnail.
_SHRINK_IN = {"L": "L", "LA": "L", "RGB": "RGB", "RGBA": "RGB"}
SHRINK_ABOVE = 1024 * 1024
# TIFF pages that tifffile decodes with the standard library (zlib, lzma): deflate (both codes)
# and LZMA, of the kinds _tifffile_page lists (8-bit gray or RGB, alpha or not; 16-bit gray).
# Pillow hands every compressed TIFF page to libtiff, which maps the whole file and walks every
# page header for each page it decodes: a 5,000-page deflate stack took 17.6 ms a page and mapped
# all of its 214 MB at every page; tifffile reads a page's strips with plain reads. Other pages
# (LZW, JPEG, packbits, ...) go to Pillow as before, from a copy of the page alone.
_TIFFFILE_COMPRESSIONS = frozenset((8, 32946, 34925))
# Bytes per value of each TIFF tag type, from tifffile's struct formats: where a page's tag
# values lie, for _one_page_tiff.
_TAG_TYPE_BYTES = {kind: struct.calcsize("<" + form) for kind, form in tifffile.TIFF.DATA_FORMATS.items()}
_COPY_CHUNK = 1 << 20
_MAX_STRIPS = 1 << 16  # strips or tiles a page may have to be copied (a 4096^2 page of 16^2 tiles)

log = logging.getLogger(__name__)


class _TifffileToDebug(logging.Filter):
    """tifffile's warnings go to the debug log, as Pillow's do (_pillow_warnings_to_debug)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return True


logging.getLogger("tifffile").addFilter(_TifffileToDebug())


@dataclass(frozen=True)
class Job:
    """What to classify: files in output order, and whether the run is a user's own folder."""

    files: tuple[Path, ...]
    root: Path
    grand_challenge: bool


def discover(input_path: Path) -> Job:
    """Decide the layout of `input_path` and list the image files to read, in order.

    The input path itself may be a link (the user named it); nothing found below it may lead out.
    """
    root = _real_path(Path(input_path))
    if root.is_file():
        return Job(files=(root,), root=root.parent, grand_challenge=False)
    if not root.is_dir():
        raise InputError(f"{input_path}: not a regular file or folder")
    if (root / "inputs.json").exists() or (root / "images" / SLUG).is_dir():
        return Job(files=(_grand_challenge_stack(root),), root=root, grand_challenge=True)
    files = sorted(_crop_files(root), key=lambda p: p.relative_to(root).as_posix())
    if not files:
        raise InputError(f"{input_path}: no crops found (looked for {', '.join(CROP_SUFFIXES)})")
    return Job(files=tuple(files), root=root, grand_challenge=False)


def _crop_files(root: Path) -> Iterator[Path]:
    """Crop files below `root`, hidden entries skipped; links to folders are not followed."""
    for folder, subfolders, names in os.walk(root):
        subfolders[:] = [name for name in subfolders if not name.startswith(".")]
        for name in names:
            if not name.startswith(".") and Path(name).suffix.lower() in CROP_SUFFIXES:
                yield _confined(Path(folder) / name, root)


def _confined(path: Path, root: Path) -> Path:
    """`path` as a regular file whose real location is inside `root`, else InputError."""
    real = _real_path(path)
    if not real.is_relative_to(root):
        raise InputError(f"{path}: leads outside the input folder {root} (link or '..'); not read")
    if not real.is_file():
        raise InputError(f"{path}: not a regular file")
    return path


def _real_path(path: Path) -> Path:
    """The real location of `path`, every link followed; a loop or a link to nothing is an InputError.

    `Path.resolve()` raises RuntimeError for a loop on Python 3.11 (OSError on newer ones).
    """
    try:
        return path.resolve(strict=True)
    except FileNotFoundError:
        kind = "a link to nothing" if path.is_symlink() else "no such file or folder"
        raise InputError(f"{path}: {kind}; not read") from None
    except RuntimeError:
        raise InputError(f"{path}: a link loop; not read") from None
    except OSError as error:  # ELOOP on newer Pythons, EACCES, ...
        raise InputError(f"{path}: cannot follow its links ({error.strerror}); not read") from None


def _grand_challenge_stack(root: Path) -> Path:
    """The one stack file in the interface folder that `inputs.json` names."""
    inputs_file = root / "inputs.json"
    folder = _confined_folder(root / _interface_folder(inputs_file, root), root, inputs_file)
    candidates = [p for p in folder.iterdir() if p.suffix.lower() in STACK_SUFFIXES]
    stacks = sorted(_confined(p, root) for p in candidates)
    if not stacks:
        raise InputError(f"{folder}: no stack file ({', '.join(STACK_SUFFIXES)}, any case)")
    if len(stacks) > 1:
        raise InputError(f"{folder}: several stack files, expected one: {[p.name for p in stacks]}")
    return stacks[0]


def _interface_folder(inputs_file: Path, root: Path) -> str:
    """The socket's `relative_path` from `inputs.json`, checked to be a plain relative path."""
    if not inputs_file.exists() and not inputs_file.is_symlink():  # a link loop: _confined says so
        raise InputError(f"{inputs_file}: missing; the grand-challenge layout needs it")
    if _confined(inputs_file, root).stat().st_size > MAX_INPUTS_JSON_BYTES:
        raise InputError(f"{inputs_file}: larger than {MAX_INPUTS_JSON_BYTES} bytes; not a socket list")
    try:
        entries = json.loads(inputs_file.read_bytes())
        interfaces = [entry["interface"] for entry in entries]
        slugs = [interface["slug"] for interface in interfaces]
        entry = interfaces[slugs.index(SLUG)] if SLUG in slugs else None
    except (OSError, ValueError, RecursionError, KeyError, TypeError) as error:
        raise InputError(f"{inputs_file}: not a list of input sockets ({type(error).__name__})") from None
    if entry is None:
        raise InputError(f"{inputs_file}: no input with slug {SLUG!r} (found {slugs})")
    if len(slugs) > 1:
        log.warning("%s: ignoring inputs other than %s: %s", inputs_file, SLUG, slugs)
    relative = entry.get("relative_path", f"images/{SLUG}")
    plain = isinstance(relative, str) and relative and not PurePosixPath(relative).is_absolute()
    if not plain or ".." in PurePosixPath(relative).parts:
        raise InputError(f"{inputs_file}: relative_path must be a relative folder path, got {relative!r}")
    return relative


def _confined_folder(folder: Path, root: Path, named_by: Path) -> Path:
    """`folder` when it is a folder whose real location is inside `root`, else InputError."""
    if not folder.exists() and not folder.is_symlink():
        raise InputError(f"{folder}: interface folder named in {named_by} is missing")
    if not _real_path(folder).is_relative_to(root):
        raise InputError(f"{folder}: folder named in {named_by} leads outside the input folder; not read")
    if not folder.is_dir():
        raise InputError(f"{folder}: interface folder named in {named_by} is not a folder")
    return folder


def count_pages(path: Path) -> int:
    """The page count, after every check that can refuse the file before a model loads.

    First what a header tells (page count, every page's size, pixel type; for `.mha`, data
    enough for every page), before any page is decoded. Then the pixel values, but only of
    pages whose type can hold a bad one (float, signed or 32-bit integers): those are decoded
    here and again to classify them. 8- and 16-bit unsigned pages, which no value check can
    fail, are decoded once, by `iter_pages` as they are classified.
    """
    with _read_errors(path):
        if Path(path).suffix.lower() == ".mha":
            header = _mha_header(path)
            pages, values_to_check = header.pages, header.dtype.kind != "u" or header.dtype.itemsize > 2
        else:
            pages, values_to_check = _pillow_header(path)
    if values_to_check:
        for _ in iter_pages(path):  # each page's values checked as it is decoded
            pass
    return pages


def iter_pages(path: Path, shrink_to: InputSpec | None = None) -> Iterator[np.ndarray]:
    """Every page of an image file as (H, W, 3) uint8 RGB, decoded one page at a time.

    With `shrink_to`, an 8-bit page (not `.mha`) of more than a megapixel comes out resized to the
    network's input (amf.preprocess.resize_image on the decoded page: the same pixels as resizing
    the array, without the full-size array and its copies: a 4096^2 page costs 64 MB, not 180).

    Raises InputError naming the file (and page) for anything unreadable, too large or empty.
    """
    count = 0
    with _read_errors(path):
        if Path(path).suffix.lower() == ".mha":
            pages = _mha_pages(path)
        else:
            pages = _pillow_pages(path, shrink_to)
        for count, page in enumerate(pages, start=1):
            yield to_rgb_uint8(page, source=f"{path} page {count - 1}")
    if count == 0:
        raise InputError(f"{path}: image has no pages")


def read_pages(path: Path) -> list[np.ndarray]:
    """All pages of a file at once: for small inputs (export checks, training crops, tests)."""
    return list(iter_pages(path))


@contextmanager
def _read_errors(path: Path) -> Iterator[None]:
    """Any failure to read `path` as an InputError naming it."""
    try:
        yield
    except InputError:
        raise
    except Exception as error:  # Pillow and numpy raise many types for corrupt files
        raise InputError(f"{path}: cannot read image ({type(error).__name__}: {error})") from None


def _open_image(path: Path) -> Image.Image:
    with _pillow_warnings_to_debug(path):
        return Image.open(path, formats=PILLOW_FORMATS)


def _pillow_header(path: Path) -> tuple[int, bool]:
    """The page count, and whether a page's values can fail a check (its mode is not one of
    _IN_RANGE_MODES). Every TIFF page's header (IFD) is read without decoding; other formats
    give every frame the first one's size and mode (and Pillow decodes a PNG's earlier frames
    to seek)."""
    values_to_check = False
    with _open_image(path) as image:
        pages = getattr(image, "n_frames", 1)
        _check_pages(path, pages)
        for index in range(pages if image.format == "TIFF" else 1):
            with _pillow_warnings_to_debug(path):
                image.seek(index)
            _check_pixels(path, index, *image.size)
            values_to_check = values_to_check or image.mode not in _IN_RANGE_MODES
    return pages, values_to_check


def _pillow_pages(path: Path, shrink_to: InputSpec | None) -> Iterator[np.ndarray]:
    """The pages of a file Pillow identified, each decoded by Pillow or, for TIFF pages of the
    kinds _tifffile_page takes, by tifffile."""
    with _open_image(path) as image, _tiff_file(path, image) as tiff:
        pages = getattr(image, "n_frames", 1)
        _check_pages(path, pages)
        for index in range(pages):
            with _pillow_warnings_to_debug(path):
                image.seek(index)
                _check_pixels(path, index, *image.size)
                page = tiff.pages[index] if tiff is not None else None
                direct = _tifffile_page(page, image.size)
                if direct is None:
                    with _page_for_pillow(image, tiff, page) as alone:
                        array = np.asarray(_shrunk(alone, shrink_to))
                elif direct.dtype == np.uint8 and _to_shrink(direct.shape[0] * direct.shape[1], shrink_to):
                    array = np.asarray(_shrunk(Image.fromarray(direct), shrink_to))
                else:
                    array = direct
            yield array


def _to_shrink(pixels: int, shrink_to: InputSpec | None) -> bool:
    return shrink_to is not None and pixels > max(SHRINK_ABOVE, shrink_to.size**2)


def _shrunk(page: Image.Image, shrink_to: InputSpec | None) -> Image.Image:
    """`page` in a mode numpy can hold; resized to the network's input if large (iter_pages)."""
    if page.mode in _CONVERT_TO_RGB:
        page = page.convert("RGBA" if "A" in page.mode or "a" in page.mode else "RGB")
    if page.mode in _SHRINK_IN and _to_shrink(page.width * page.height, shrink_to):
        if page.mode != _SHRINK_IN[page.mode]:  # Pillow's convert to the same mode copies
            page = page.convert(_SHRINK_IN[page.mode])
        page = resize_image(page, shrink_to)
    return page


@contextmanager
def _tiff_file(path: Path, image: Image.Image) -> Iterator[tifffile.TiffFile | None]:
    """tifffile's view of a TIFF that has as many pages as Pillow counts, else None (Pillow decodes
    every page then, from the file itself). Pages are not cached: one page's header is held at a
    time."""
    if image.format != "TIFF":
        yield None
        return
    with ExitStack() as stack:
        try:
            tiff = stack.enter_context(tifffile.TiffFile(path))
            tiff.pages.cache = False
            tiff.pages.useframes = False
            same_count = len(tiff.pages) == getattr(image, "n_frames", 1)
        except Exception as error:  # a TIFF that Pillow reads and tifffile does not
            log.debug("%s: decoded by Pillow (tifffile: %s: %s)", path, type(error).__name__, error)
            same_count = False
        yield tiff if same_count else None


def _tifffile_page(page: tifffile.TiffPage | None, size: tuple[int, int]) -> np.ndarray | None:
    """`page` decoded by tifffile when it is of a kind that tifffile and Pillow decode to the same
    values (_TIFFFILE_COMPRESSIONS) and of the size Pillow read; else None, for Pillow."""
    if page is None:
        return None
    samples = {1: (1, 2), 2: (3, 4)}.get(page.photometric, ())  # gray or RGB, alpha or not
    simple = (
        page.compression in _TIFFFILE_COMPRESSIONS
        and page.samplesperpixel in samples
        and tuple(page.extrasamples) in ((), (0,), (2,))  # no premultiplied alpha (Pillow's RGBa)
        and (page.bitspersample == 8 or (page.bitspersample == 16 and page.samplesperpixel == 1))
        and page.sampleformat == 1
        and page.planarconfig == 1
        and page.colormap is None
        and not page.is_subsampled
        and page.imagedepth == 1
        and (page.imagewidth, page.imagelength) == size
    )
    return page.asarray() if simple else None


@contextmanager
def _page_for_pillow(
    image: Image.Image, tiff: tifffile.TiffFile | None, page: tifffile.TiffPage | None
) -> Iterator[Image.Image]:
    """What Pillow decodes the current page from: for a compressed TIFF page, which goes to
    libtiff, a copy of the page alone (_one_page_tiff) when Pillow reads it as it reads the page
    in the file; else `image` itself (uncompressed pages, old-style JPEG, no memfd, NDPI, a page
    whose bytes _page_bytes will not copy)."""
    copyable = tiff is not None and page is not None and page.compression not in (1, 6)
    found = _page_bytes(tiff, page, image.size) if copyable and _memfd_works() else None
    if found is None:
        yield image
        return
    with _one_page_tiff(tiff, page, *found) as copy, Image.open(copy, formats=("TIFF",)) as alone:
        yield alone if (alone.size, alone.mode) == (image.size, image.mode) else image


def _page_bytes(
    tiff: tifffile.TiffFile, page: tifffile.TiffPage, size: tuple[int, int]
) -> tuple[list[tuple[int, int]], int] | None:
    """The byte ranges libtiff reads for `page` (the header, the page's IFD, its tag values and its
    strips or tiles, overlaps joined) and where the IFD's next-page offset lies. None where a copy
    would not pay or not be faithful: NDPI offsets; a page not of Pillow's `size` or of a depth
    (which Pillow ignores); strip sizes missing or zero (libtiff then guesses from the file's
    size); more than _MAX_STRIPS strips; an IFD that runs past the end; a strip over the offsets
    the copy rewrites; more bytes than twice the decoded page and 1 MiB (a hostile page may claim
    the whole file; libtiff, given the file, reads only what it needs)."""
    form, source = tiff.tiff, tiff.filehandle
    counts = page.databytecounts
    if (
        form.is_ndpi
        or (page.imagewidth, page.imagelength, page.imagedepth) != (*size, 1)
        or not (279 in page.tags or 325 in page.tags)  # StripByteCounts, TileByteCounts
        or not 0 < len(counts) <= _MAX_STRIPS
        or min(counts) == 0
    ):
        return None
    source.seek(page.offset)
    (tags,) = struct.unpack(form.tagnoformat, source.read(form.tagnosize))
    entries = page.offset + form.tagnosize
    next_page = entries + tags * form.tagsize  # the IFD's next-page offset lies here
    rewritten = (_first_page_at(form), next_page)
    if next_page + form.offsetsize > source.size:
        return None
    ranges = [(0, _first_page_at(form) + form.offsetsize), (page.offset, next_page + form.offsetsize)]
    source.seek(entries)
    for _, kind, count, value in struct.iter_unpack(form.tagheaderformat, source.read(next_page - entries)):
        nbytes = _TAG_TYPE_BYTES.get(kind, 0) * count
        if nbytes > form.tagoffsetthreshold:  # the value lies elsewhere, at the offset given
            (offset,) = struct.unpack(form.offsetformat, value)
            ranges.append((offset, offset + nbytes))
    strips = [(offset, offset + count) for offset, count in zip(page.dataoffsets, counts, strict=False)]
    if any(start < at + form.offsetsize and at < end for start, end in strips for at in rewritten):
        return None
    merged = _merged(ranges + strips, source.size)
    within = sum(end - start for start, end in merged) <= 2 * page.nbytes + (1 << 20)
    return (merged, next_page) if within else None


@functools.cache
def _memfd_works() -> bool:
    """Whether in-memory files can be made here (Linux; a sandbox may refuse the call)."""
    try:
        os.close(os.memfd_create("amf-probe", os.MFD_CLOEXEC))
    except (AttributeError, OSError):
        return False
    return True


def _first_page_at(form: tifffile.TiffFormat) -> int:
    """Where the header's offset of the first page lies (classic TIFF or BigTIFF)."""
    return 8 if form.is_bigtiff else 4


@contextmanager
def _one_page_tiff(
    tiff: tifffile.TiffFile, page: tifffile.TiffPage, ranges: list[tuple[int, int]], next_page: int
) -> Iterator[BinaryIO]:
    """Page `page` alone, in an in-memory file (memfd) that libtiff can map: of the TIFF's size but
    holding only `ranges` (_page_bytes), each at its own offset (the rest is a hole that takes no
    memory); the header points at the page and the page at no next one. Given the file, libtiff
    maps all of it and walks every page header before the page: a 5,000-page LZW stack of 282 MB
    added 305 MB of mapped file to the peak RSS."""
    form, source = tiff.tiff, tiff.filehandle
    with os.fdopen(os.memfd_create("amf-tiff-page", os.MFD_CLOEXEC), "w+b") as copy:
        copy.truncate(source.size)
        for start, end in ranges:
            for at in range(start, end, _COPY_CHUNK):
                source.seek(at)
                copy.seek(at)
                copy.write(source.read(min(_COPY_CHUNK, end - at)))
        copy.seek(_first_page_at(form))
        copy.write(struct.pack(form.offsetformat, page.offset))
        copy.seek(next_page)
        copy.write(struct.pack(form.offsetformat, 0))
        copy.flush()
        copy.seek(0)
        yield copy


def _merged(ranges: list[tuple[int, int]], size: int) -> list[tuple[int, int]]:
    """Byte ranges cut to [0, size), overlaps joined: each byte is copied once, however many
    strips a hostile page points at it."""
    merged: list[tuple[int, int]] = []
    for start, end in sorted((max(start, 0), min(end, size)) for start, end in ranges):
        if start >= end:
            continue
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


@contextmanager
def _pillow_warnings_to_debug(path: Path) -> Iterator[None]:
    """Pillow's warnings (corrupt EXIF, a decompression bomb below our own, lower pixel limit)
    go to the debug log: the file is then read or refused, and a refusal stays one line."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield
        finally:
            for warning in caught:
                log.debug("%s: Pillow warned: %s", path, warning.message)


def _mha_header(path: Path) -> mha.Header:
    """The MetaImage header, checked; uncompressed pixel data must fill every page it promises."""
    header = mha.read_header(path)
    _check_pages(path, header.pages)
    _check_pixels(path, 0, header.width, header.height)
    if header.page_bytes > MAX_PAGE_BYTES:
        raise InputError(f"{path}: {header.page_bytes} bytes a page, more than the limit of {MAX_PAGE_BYTES}")
    data_bytes = Path(path).stat().st_size - header.data_offset
    if not header.compressed and data_bytes < header.pages * header.page_bytes:
        raise InputError(
            f"{path}: pixel data ends in page {data_bytes // header.page_bytes} of {header.pages}"
        )
    return header


def _mha_pages(path: Path) -> Iterator[np.ndarray]:
    yield from mha.iter_pages(path, _mha_header(path))


def _check_pages(path: Path, pages: int) -> None:
    if pages > MAX_PAGES:
        raise InputError(f"{path}: {pages} pages, more than the limit of {MAX_PAGES} per file")


def _check_pixels(path: Path, index: int, width: int, height: int) -> None:
    if width * height > MAX_PAGE_PIXELS:
        raise InputError(
            f"{path} page {index}: {width} x {height} pixels, more than the limit of {MAX_PAGE_PIXELS}"
        )


def to_rgb_uint8(array: np.ndarray, *, source: str) -> np.ndarray:
    """Gray, gray+alpha, RGB or RGBA of any integer or float type -> (H, W, 3) uint8.

    One rule per pixel type, never a guess from the values: uint8 as is; every wider integer
    type is 16-bit (0-65535 -> 0-255, values outside are an error); float must lie in [0, 1]
    (-> 0-255); bool is 0 or 255. Alpha is dropped, gray repeated.
    """
    array = np.asarray(array)
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[-1] not in (1, 2, 3, 4) or min(array.shape[:2]) < 1:
        raise InputError(f"{source}: unsupported page shape {array.shape}")
    array = array[..., :3] if array.shape[-1] >= 3 else np.repeat(array[..., :1], 3, axis=-1)
    return np.ascontiguousarray(_to_uint8(array, source=source))


def _to_uint8(array: np.ndarray, *, source: str) -> np.ndarray:
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    if np.issubdtype(array.dtype, np.floating):
        if not np.all(np.isfinite(array)):
            raise InputError(f"{source}: page contains NaN or infinite values")
        low, high = float(array.min()), float(array.max())
        if low < 0.0 or high > 1.0:
            raise InputError(
                f"{source}: float pixels must lie in [0, 1], found [{low:g}, {high:g}]; "
                "save 0-255 data as uint8"
            )
        scaled = array.astype(np.float32)  # one working copy, scaled in place
        scaled *= 255.0
        return np.rint(scaled, out=scaled).astype(np.uint8)
    if np.issubdtype(array.dtype, np.integer):
        low, high = int(array.min()), int(array.max())
        if low < 0 or high > 65535:
            raise InputError(f"{source}: integer pixels must lie in 0-65535 (16-bit), found [{low}, {high}]")
        scaled = array.astype(np.uint32)  # one working copy: round(x * 255 / 65535) in place
        scaled *= 255
        scaled += 32767
        scaled //= 65535
        return scaled.astype(np.uint8)
    raise InputError(f"{source}: unsupported pixel type {array.dtype}")


def page_names(path: Path, root: Path, count: int) -> list[str]:
    """Names for predictions.csv: the file relative to the input folder, `#page` if several."""
    relative = Path(path).relative_to(root).as_posix()
    return [relative] if count == 1 else [f"{relative}#{i}" for i in range(count)]
