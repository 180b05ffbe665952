"""amf.stacks: every input layout, every pixel format, every input error, and the output writer."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from contextlib import AbstractContextManager as ContextManager
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pytest
import SimpleITK as sitk
import tifffile
from conftest import SAMPLE_INPUT, shared_data
from hostile import count_decodes, mha_file
from PIL import Image, TiffImagePlugin

from amf import stacks
from amf.errors import InputError
from amf.manifest import InputSpec
from amf.preprocess import resize


def gc_layout(root: Path, files: dict[str, bytes] | None = None, slug: str = stacks.SLUG) -> Path:
    folder = root / "images" / stacks.SLUG
    folder.mkdir(parents=True)
    for name, data in (files or {}).items():
        (folder / name).write_bytes(data)
    entry = {
        "image": {"name": "x.tiff"},
        "interface": {"slug": slug, "relative_path": f"images/{stacks.SLUG}"},
    }
    (root / "inputs.json").write_text(json.dumps([entry]))
    return root


def tiff_bytes(tmp_path: Path, pages: int = 2) -> bytes:
    path = tmp_path / "scratch.tif"
    noise = np.random.default_rng(0).integers(0, 255, (pages, 128, 128, 3), dtype=np.uint8)
    images = [Image.fromarray(page) for page in noise]
    images[0].save(path, save_all=True, append_images=images[1:], compression="tiff_adobe_deflate")
    return path.read_bytes()


def test_discover_grand_challenge_sample() -> None:
    job = stacks.discover(SAMPLE_INPUT)
    assert job.grand_challenge
    assert [p.name for p in job.files] == ["stack_fixture.tiff"]
    assert len(stacks.read_pages(job.files[0])) == 6


@pytest.mark.parametrize("name", ["stack.TIF", "a.tiff", "uuid-1234.Tiff"])
def test_grand_challenge_globs_any_name_and_case(tmp_path: Path, name: str) -> None:
    gc_layout(tmp_path, {name: tiff_bytes(tmp_path)})
    assert stacks.discover(tmp_path).files[0].name == name


def test_grand_challenge_reads_mha(tmp_path: Path) -> None:
    gc_layout(tmp_path)
    image = sitk.GetImageFromArray(np.zeros((3, 20, 20, 3), np.uint8), isVector=True)
    sitk.WriteImage(image, str(tmp_path / "images" / stacks.SLUG / "upload.mha"))
    pages = stacks.read_pages(stacks.discover(tmp_path).files[0])
    assert len(pages) == 3 and pages[0].shape == (20, 20, 3)


def test_missing_inputs_json(tmp_path: Path) -> None:
    gc_layout(tmp_path, {"s.tif": tiff_bytes(tmp_path)})
    (tmp_path / "inputs.json").unlink()
    with pytest.raises(InputError, match=r"inputs\.json: missing"):
        stacks.discover(tmp_path)


def test_unknown_slug(tmp_path: Path) -> None:
    gc_layout(tmp_path, {"s.tif": tiff_bytes(tmp_path)}, slug="some-other-socket")
    with pytest.raises(InputError, match="no input with slug 'stacked-histopathology-roi-cropouts'"):
        stacks.discover(tmp_path)


def test_malformed_inputs_json(tmp_path: Path) -> None:
    gc_layout(tmp_path, {"s.tif": tiff_bytes(tmp_path)})
    (tmp_path / "inputs.json").write_text("{not json")
    with pytest.raises(InputError, match="inputs.json: not a list of input sockets"):
        stacks.discover(tmp_path)


def test_no_stack_file(tmp_path: Path) -> None:
    gc_layout(tmp_path, {"notes.txt": b"hello"})
    with pytest.raises(InputError, match="no stack file"):
        stacks.discover(tmp_path)


def test_several_stack_files(tmp_path: Path) -> None:
    data = tiff_bytes(tmp_path)
    gc_layout(tmp_path, {"a.tif": data, "b.tiff": data})
    with pytest.raises(InputError, match=r"several stack files.*a\.tif.*b\.tiff"):
        stacks.discover(tmp_path)


def test_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no crops found"):
        stacks.discover(tmp_path)


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such file or folder"):
        stacks.discover(tmp_path / "nope")


def test_input_linked_to_a_task_folder_as_in_invoke_mode(tmp_path: Path) -> None:
    """grand-challenge's invoke mode makes /input a link to /opt/ml/input/data/<pk>-input: that
    folder is the root, a link through /input that stays in it is read, one to another task's
    folder beside it is refused."""
    tasks = tmp_path / "opt" / "ml" / "input" / "data"
    this, other = gc_layout(tasks / "1-input"), gc_layout(tasks / "2-input", {"x.tif": tiff_bytes(tmp_path)})
    (this / "kept").mkdir()
    (this / "kept" / "real.tif").write_bytes(tiff_bytes(tmp_path))
    link = tmp_path / "input"
    link.symlink_to(this, target_is_directory=True)
    stack = this / "images" / stacks.SLUG / "stack.tif"
    stack.symlink_to(link / "kept" / "real.tif")
    job = stacks.discover(link)
    assert (job.root, job.files, job.grand_challenge) == (this, (stack,), True)
    assert len(stacks.read_pages(job.files[0])) == 2
    stack.unlink()
    stack.symlink_to(other / "images" / stacks.SLUG / "x.tif")
    with pytest.raises(InputError, match=r"stack\.tif: leads outside the input folder .*1-input"):
        stacks.discover(link)


def test_folder_of_crops_is_recursive_sorted_and_skips_hidden(tmp_path: Path) -> None:
    for rel in ["b/2.png", "b/10.jpg", "a.PNG", ".hidden/x.png", "notes.txt"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        if rel.endswith("txt"):
            (tmp_path / rel).write_text("x")
        else:
            Image.new("RGB", (8, 8)).save(tmp_path / rel, format="PNG" if "png" in rel.lower() else "JPEG")
    job = stacks.discover(tmp_path)
    assert not job.grand_challenge
    assert [p.relative_to(tmp_path).as_posix() for p in job.files] == ["a.PNG", "b/10.jpg", "b/2.png"]


def test_single_file_input(tmp_path: Path) -> None:
    path = tmp_path / "one.tif"
    path.write_bytes(tiff_bytes(tmp_path, pages=3))
    job = stacks.discover(path)
    assert job.files == (path,) and job.root == tmp_path and not job.grand_challenge
    assert stacks.page_names(path, job.root, 3) == ["one.tif#0", "one.tif#1", "one.tif#2"]
    assert stacks.page_names(path, job.root, 1) == ["one.tif"]


@pytest.mark.parametrize(
    ("mode", "value", "rgb"),
    [
        ("L", 128, (128, 128, 128)),
        ("LA", (128, 255), (128, 128, 128)),
        ("RGBA", (10, 20, 30, 0), (10, 20, 30)),
        ("P", 5, (40, 50, 60)),  # palette entry 5, set below
        ("1", 1, (255, 255, 255)),
        ("CMYK", (0, 0, 0, 0), (255, 255, 255)),  # no ink: white
    ],
)
def test_pillow_modes_become_rgb_uint8(tmp_path: Path, mode: str, value, rgb: tuple[int, int, int]) -> None:
    path = tmp_path / f"crop_{mode}.{'tif' if mode == 'CMYK' else 'png'}"
    image = Image.new(mode, (30, 20), value)
    if mode == "P":
        image.putpalette([0, 0, 0] * 5 + [40, 50, 60])
    image.save(path)
    (page,) = stacks.read_pages(path)
    assert page.shape == (20, 30, 3) and page.dtype == np.uint8
    assert (page == rgb).all(), page[0, 0]


def test_rgba_drops_alpha_and_gray_repeats(tmp_path: Path) -> None:
    Image.new("RGBA", (4, 4), (10, 20, 30, 0)).save(tmp_path / "a.png")
    Image.new("L", (4, 4), 77).save(tmp_path / "g.png")
    assert stacks.read_pages(tmp_path / "a.png")[0][0, 0].tolist() == [10, 20, 30]
    assert stacks.read_pages(tmp_path / "g.png")[0][0, 0].tolist() == [77, 77, 77]


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "LA", "P", "I;16"])
@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
@pytest.mark.parametrize("compression", [None, "tiff_adobe_deflate"])  # None: PNG (I;16: raw TIFF)
def test_a_large_page_shrunk_as_decoded_has_the_pixels_of_a_resized_array(
    tmp_path: Path, mode: str, interpolation: str, compression: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`shrink_to` resizes a large 8-bit page before it becomes an array (alpha dropped first,
    as the array path drops it), whether Pillow or tifffile (a deflate TIFF) decodes it: the
    network sees the same pixels; pages up to SHRINK_ABOVE pixels (here 100 x 100) and 16-bit
    pages pass through as before."""
    monkeypatch.setattr(stacks, "SHRINK_ABOVE", 100 * 100)
    spec = InputSpec(size=48, mean=(0.5,) * 3, std=(0.5,) * 3, interpolation=interpolation)
    rng = np.random.default_rng(0)
    suffix = "tif" if compression or mode == "I;16" else "png"
    path = tmp_path / f"page-{mode.replace(';', '')}.{suffix}"
    options = {"compression": compression} if compression else {}
    if mode == "I;16":
        Image.fromarray(rng.integers(0, 65535, (150, 210), dtype=np.uint16)).save(path, **options)
    else:
        page = Image.fromarray(rng.integers(0, 255, (150, 210, 4), dtype=np.uint8), "RGBA").convert(mode)
        page.save(path, **options)
    small = tmp_path / f"small-{path.name}"
    Image.open(path).crop((0, 0, 100, 90)).save(small, **options)
    for source in (path, small):
        (page,) = stacks.iter_pages(source, shrink_to=spec)
        (full,) = stacks.read_pages(source)
        np.testing.assert_array_equal(resize(page, spec), resize(full, spec))
    assert next(stacks.iter_pages(path, shrink_to=spec)).shape == (
        (150, 210, 3) if mode == "I;16" else (48, 48, 3)
    )
    assert next(stacks.iter_pages(small, shrink_to=spec)).shape == (90, 100, 3)


def _tiff_kinds(rng: np.random.Generator) -> dict[str, tuple[np.ndarray, dict]]:
    """Two pages of each kind of TIFF page, with tifffile's writing options."""
    rgb = rng.integers(0, 256, (2, 40, 50, 3), dtype=np.uint8)
    gray16 = rng.integers(0, 65536, (2, 40, 50), dtype=np.uint16)
    alpha = rng.integers(0, 256, (2, 40, 50, 4), dtype=np.uint8)
    return {
        "rgb": (rgb, {"photometric": "rgb"}),
        "rgb-predictor": (rgb, {"photometric": "rgb", "predictor": True}),
        "rgb-tiled": (rng.integers(0, 256, (2, 64, 64, 3), dtype=np.uint8), {"tile": (32, 32)}),
        "rgba": (alpha, {"photometric": "rgb", "extrasamples": ["unassalpha"]}),
        "gray": (rgb[..., 0], {"photometric": "minisblack"}),
        "gray-alpha": (alpha[..., :2], {"photometric": "minisblack", "extrasamples": ["unassalpha"]}),
        "gray16": (gray16, {"photometric": "minisblack", "predictor": True}),
        # left to Pillow: its 16-bit RGB keeps the high byte, its premultiplied alpha is undone
        "rgb16": (np.stack([gray16] * 3, axis=-1), {"photometric": "rgb"}),
        "rgba-premultiplied": (alpha, {"photometric": "rgb", "extrasamples": ["assocalpha"]}),
    }


def _pillow_pages(path: Path) -> list[np.ndarray]:
    """Each page as Pillow decodes it (libtiff for a compressed one), through to_rgb_uint8."""
    pages = []
    with Image.open(path) as image:
        for index in range(image.n_frames):
            image.seek(index)
            page = image.convert("RGBA") if image.mode in stacks._CONVERT_TO_RGB else image
            pages.append(stacks.to_rgb_uint8(np.asarray(page), source=str(path)))
    return pages


@pytest.mark.parametrize("compression", ["zlib", "deflate", "lzma"])  # codes 8, 32946, 34925
def test_compressed_tiff_pages_tifffile_decodes_have_pillows_values_without_libtiff(
    tmp_path: Path, compression: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Deflate and LZMA pages of the kinds _tifffile_page lists are read without libtiff (which
    maps the whole file for every page), with the values Pillow gives; other kinds still go to
    Pillow, with the same values as before."""
    kinds = _tiff_kinds(np.random.default_rng(0))
    references = {}
    for kind, (pages, options) in kinds.items():
        path = tmp_path / f"{kind}.tif"
        with tifffile.TiffWriter(path) as writer:
            for page in pages:
                writer.write(page, compression=compression, **options)
        references[kind] = (path, _pillow_pages(path))

    def no_libtiff(self: Image.Image) -> None:
        raise AssertionError("libtiff decoded a page")

    for kind, (path, expected) in references.items():
        with monkeypatch.context() as patch:
            if kind not in ("rgb16", "rgba-premultiplied"):
                patch.setattr("PIL.TiffImagePlugin.TiffImageFile._load_libtiff", no_libtiff)
            pages = stacks.read_pages(path)
        assert len(pages) == 2
        for page, reference in zip(pages, expected, strict=True):
            np.testing.assert_array_equal(page, reference, err_msg=kind)


def _pillow_written(path: Path, mode: str, compression: str, rng: np.random.Generator) -> None:
    """Three pages in `mode`, written by Pillow with `compression` (one libtiff decodes)."""
    if mode == "I;16":
        pages = [Image.fromarray(rng.integers(0, 65536, (40, 50), dtype=np.uint16)) for _ in range(3)]
    else:
        pages = [
            Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).convert(mode) for _ in range(3)
        ]
    pages[0].save(path, save_all=True, append_images=pages[1:], compression=compression)


def _tifffile_written(path: Path, bigtiff: bool, layout: dict, rng: np.random.Generator) -> None:
    """Three 16-bit RGB deflate pages (a kind left to Pillow), classic or BigTIFF, in `layout`."""
    with tifffile.TiffWriter(path, bigtiff=bigtiff) as writer:
        for _ in range(3):
            page = rng.integers(0, 65536, (64, 64, 3), dtype=np.uint16)
            writer.write(page, photometric="rgb", compression="zlib", **layout)


LIBTIFF_PAGES = {
    "lzw-rgb": lambda path, rng: _pillow_written(path, "RGB", "tiff_lzw", rng),
    "lzw-palette": lambda path, rng: _pillow_written(path, "P", "tiff_lzw", rng),
    "lzw-gray16": lambda path, rng: _pillow_written(path, "I;16", "tiff_lzw", rng),
    "jpeg-rgb": lambda path, rng: _pillow_written(path, "RGB", "jpeg", rng),
    "jpeg-gray": lambda path, rng: _pillow_written(path, "L", "jpeg", rng),
    "packbits-rgb": lambda path, rng: _pillow_written(path, "RGB", "packbits", rng),
    "group4-bilevel": lambda path, rng: _pillow_written(path, "1", "group4", rng),
    "deflate-cmyk": lambda path, rng: _pillow_written(path, "CMYK", "tiff_adobe_deflate", rng),
    "deflate-rgb16-strips": lambda path, rng: _tifffile_written(path, False, {"rowsperstrip": 8}, rng),
    "deflate-rgb16-bigtiff-tiles": lambda path, rng: _tifffile_written(path, True, {"tile": (32, 32)}, rng),
}


@pytest.mark.parametrize("kind", LIBTIFF_PAGES)
def test_libtiff_decodes_each_page_from_a_copy_of_that_page_alone(
    tmp_path: Path, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A compressed page that goes to libtiff is handed to it alone, in an in-memory file that
    holds only that page's bytes (libtiff maps the file it is given and walks every page header
    before the page): the values are those Pillow decodes from the whole file."""
    path = tmp_path / f"{kind}.tif"
    LIBTIFF_PAGES[kind](path, np.random.default_rng(0))
    copies = []
    one_page_tiff = stacks._one_page_tiff

    @contextmanager
    def measured(tiff: tifffile.TiffFile, page: tifffile.TiffPage, *where: object) -> Iterator[BinaryIO]:
        with one_page_tiff(tiff, page, *where) as copy:
            with Image.open(copy) as alone:
                frames = alone.n_frames
            copy.seek(0)
            copies.append((frames, os.fstat(copy.fileno()).st_blocks * 512, sum(page.databytecounts)))
            yield copy

    monkeypatch.setattr(stacks, "_one_page_tiff", measured)
    pages = stacks.read_pages(path)
    for page, reference in zip(pages, _pillow_pages(path), strict=True):
        np.testing.assert_array_equal(page, reference)
    assert len(copies) == 3
    for frames, held, data in copies:
        assert frames == 1 and held <= data + 3 * 4096, (frames, held, data, path.stat().st_size)


def _pages_copied(path: Path, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The pages of `path` handed to libtiff as one-page copies, checking that every page comes out
    with the values Pillow decodes from the whole file."""
    one_page_tiff, copied = stacks._one_page_tiff, []

    def recorded(
        tiff: tifffile.TiffFile, page: tifffile.TiffPage, *where: object
    ) -> ContextManager[BinaryIO]:
        copied.append(page.index)
        return one_page_tiff(tiff, page, *where)

    monkeypatch.setattr(stacks, "_one_page_tiff", recorded)
    for page, reference in zip(stacks.read_pages(path), _pillow_pages(path), strict=True):
        np.testing.assert_array_equal(page, reference)
    return copied


def test_a_page_claiming_more_bytes_than_it_can_use_is_not_copied(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A strip that claims the rest of a 3 MB file: the page is not copied (that would hold the
    claim in memory) but decoded from the file as before, to the values Pillow gives."""
    path = tmp_path / "claims.tif"
    rng = np.random.default_rng(0)
    pages = [Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)) for _ in range(200)]
    pages[0].save(path, save_all=True, append_images=pages[1:], compression="tiff_lzw")
    with tifffile.TiffFile(path) as tiff:
        counts = tiff.pages[0].tags["StripByteCounts"]
        offset = tiff.pages[0].dataoffsets[0]
        assert counts.count == 1 and counts.dtype == tifffile.DATATYPE.LONG
    with path.open("r+b") as file:
        file.seek(counts.valueoffset)
        file.write(int(path.stat().st_size - offset).to_bytes(4, "little"))
    assert _pages_copied(path, monkeypatch) == list(range(1, 200))


def _crafted(path: Path, kind: str) -> None:
    """Three compressed pages; page 1 then crafted so that a copy of it would not decode as the file does."""
    rng = np.random.default_rng(0)
    pages = [Image.fromarray(rng.integers(0, 256, (8, 12, 3), dtype=np.uint8)) for _ in range(3)]
    info = TiffImagePlugin.ImageFileDirectory_v2()
    if kind == "image-depth":  # tifffile's ImageDepth (Pillow ignores it) would raise the byte limit
        info[32997], info.tagtype[32997] = 1000, 4
    compression = "packbits" if kind == "strip-over-the-header" else "tiff_lzw"  # packbits decodes any bytes
    pages[0].save(path, save_all=True, append_images=pages[1:], compression=compression, tiffinfo=info)
    with tifffile.TiffFile(path) as tiff:
        offsets, counts = (tiff.pages[1].tags[name] for name in ("StripOffsets", "StripByteCounts"))
    with path.open("r+b") as file:
        if kind == "byte-counts-missing":  # the tag renamed: libtiff guesses the size from the file's
            file.seek(counts.offset)
            file.write((65001).to_bytes(2, "little"))
        elif kind == "byte-count-zero":
            file.seek(counts.valueoffset)
            file.write(bytes(4))
        elif kind == "strip-over-the-header":  # the copy rewrites the header's first-page offset
            file.seek(offsets.valueoffset)
            file.write(bytes(4))
            file.seek(counts.valueoffset)
            file.write((counts.value[0] + offsets.value[0]).to_bytes(4, "little"))


@pytest.mark.parametrize(
    "kind", ["byte-counts-missing", "byte-count-zero", "strip-over-the-header", "image-depth"]
)
def test_a_page_a_copy_would_decode_otherwise_is_decoded_from_the_file(
    tmp_path: Path, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Crafted pages (found in review) that libtiff reads other than a one-page copy would show
    it, or that would lift the copy's byte limit: decoded from the file, to Pillow's values."""
    path = tmp_path / f"{kind}.tif"
    _crafted(path, kind)
    assert _pages_copied(path, monkeypatch) == ([] if kind == "image-depth" else [0, 2])


def test_without_in_memory_files_pages_are_decoded_from_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sandbox that refuses memfd_create: libtiff reads the file itself, as before."""

    def refused(*args: object) -> int:
        raise PermissionError("memfd_create: operation not permitted")

    monkeypatch.setattr(os, "memfd_create", refused)
    stacks._memfd_works.cache_clear()
    path = tmp_path / "lzw.tif"
    _pillow_written(path, "RGB", "tiff_lzw", np.random.default_rng(0))
    try:
        for page, reference in zip(stacks.read_pages(path), _pillow_pages(path), strict=True):
            np.testing.assert_array_equal(page, reference)
        assert not stacks._memfd_works()
    finally:
        stacks._memfd_works.cache_clear()


def test_merged_byte_ranges_are_cut_to_the_file_and_copied_once() -> None:
    """A hostile page may point every strip at the same bytes, or past the end of the file."""
    ranges = [(40, 60), (0, 8), (50, 70), (-5, 3), (90, 200), (120, 130), (70, 80)]
    assert stacks._merged(ranges, 100) == [(0, 8), (40, 80), (90, 100)]


def test_16_bit_gray_is_scaled_not_clipped(tmp_path: Path) -> None:
    array = np.full((16, 16), 65535, np.uint16)
    array[0, 0] = 0
    Image.fromarray(array).save(tmp_path / "deep.png")
    (page,) = stacks.read_pages(tmp_path / "deep.png")
    assert page[1, 1].tolist() == [255, 255, 255] and page[0, 0].tolist() == [0, 0, 0]


def test_16_bit_rgb_mha(tmp_path: Path) -> None:
    array = np.full((2, 8, 8, 3), 257 * 100, np.uint16)
    sitk.WriteImage(sitk.GetImageFromArray(array, isVector=True), str(tmp_path / "s.mha"))
    pages = stacks.read_pages(tmp_path / "s.mha")
    assert len(pages) == 2 and pages[0].dtype == np.uint8 and pages[0][0, 0].tolist() == [100, 100, 100]


def test_gray_mha_single_page(tmp_path: Path) -> None:
    sitk.WriteImage(sitk.GetImageFromArray(np.full((9, 7), 3, np.uint8)), str(tmp_path / "g.mha"))
    (page,) = stacks.read_pages(tmp_path / "g.mha")
    assert page.shape == (9, 7, 3)


@pytest.mark.parametrize(
    ("array", "expected"),
    [
        (np.full((2, 2), 0.5, np.float32), 128),
        (np.full((2, 2), 1.0), 255),
        (np.full((2, 2), 25700, np.uint16), 100),
        (np.full((2, 2, 1), True), 255),
        (np.full((2, 2), 300, np.int32), 1),
    ],
)
def test_to_rgb_uint8_types(array: np.ndarray, expected: int) -> None:
    page = stacks.to_rgb_uint8(array, source="x")
    assert page.dtype == np.uint8 and page.shape == (2, 2, 3) and page[0, 0, 0] == expected


def test_to_rgb_uint8_rejects_nan_and_bad_shapes() -> None:
    with pytest.raises(InputError, match="x: page contains NaN"):
        stacks.to_rgb_uint8(np.full((2, 2), np.nan), source="x")
    with pytest.raises(InputError, match=r"x: unsupported page shape \(2, 2, 5\)"):
        stacks.to_rgb_uint8(np.zeros((2, 2, 5), np.uint8), source="x")


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data:UserWarning")  # Pillow on the cut TIFF
def test_corrupt_and_truncated_images_name_the_file(tmp_path: Path) -> None:
    (tmp_path / "junk.tif").write_bytes(b"II*\x00 this is not a tiff")
    with pytest.raises(InputError, match=r"junk\.tif: cannot read image"):
        stacks.read_pages(tmp_path / "junk.tif")
    data = tiff_bytes(tmp_path)
    (tmp_path / "cut.tif").write_bytes(data[: len(data) // 3])
    with pytest.raises(InputError, match=r"cut\.tif: cannot read image"):
        stacks.read_pages(tmp_path / "cut.tif")
    (tmp_path / "empty.mha").write_bytes(b"")
    with pytest.raises(InputError, match=r"empty\.mha: no ElementDataFile line"):
        stacks.read_pages(tmp_path / "empty.mha")


def test_float_pages_outside_0_1_are_refused_not_guessed() -> None:
    page = np.full((2, 2), 0.5, np.float32)
    page[0, 0] = 1.5  # one bright pixel used to switch the whole page to a 0-255 reading
    with pytest.raises(InputError, match=r"x: float pixels must lie in \[0, 1\], found \[0.5, 1.5\]"):
        stacks.to_rgb_uint8(page, source="x")
    with pytest.raises(InputError, match="x: integer pixels must lie in 0-65535"):
        stacks.to_rgb_uint8(np.full((2, 2), -1, np.int16), source="x")


def test_real_challenge_sample_reads_16_rgb_pages() -> None:
    job = stacks.discover(shared_data("gc-sample", "input"))
    pages = stacks.read_pages(job.files[0])
    assert len(pages) == 16 and all(p.shape == (128, 128, 3) and p.dtype == np.uint8 for p in pages)
    reference = sitk.GetArrayFromImage(sitk.ReadImage(str(job.files[0])))
    np.testing.assert_array_equal(np.stack(pages), reference)


def test_header_problems_are_found_before_any_page_is_decoded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stack whose last page is too large; an .mha whose last page's data the file lacks."""
    decoded = count_decodes(monkeypatch)
    pages = [Image.new("RGB", (16, 16))] * 30 + [Image.new("L", (8192, 4096))]
    pages[0].save(tmp_path / "wide.tif", save_all=True, append_images=pages[1:])
    with pytest.raises(InputError, match=r"wide\.tif page 30: 8192 x 4096 pixels, more than the limit"):
        stacks.count_pages(tmp_path / "wide.tif")
    mha_file(tmp_path / "cut.mha", {"DimSize": "8 8 30"}, bytes(8 * 8 * 29))
    with pytest.raises(InputError, match=r"cut\.mha: pixel data ends in page 29 of 30"):
        stacks.count_pages(tmp_path / "cut.mha")
    assert decoded == []
    (tmp_path / "stack.tif").write_bytes(tiff_bytes(tmp_path, pages=3))
    assert stacks.count_pages(tmp_path / "stack.tif") == 3 and decoded == []
    assert len(stacks.read_pages(tmp_path / "stack.tif")) == 3 and len(decoded) == 3


def test_tifffiles_warnings_go_to_the_debug_log(caplog: pytest.LogCaptureFixture) -> None:
    """A refusal stays one ERROR line: tifffile's warnings are demoted as Pillow's are."""
    with caplog.at_level(logging.INFO):
        logging.getLogger("tifffile").warning("TiffPage 0: invalid tag")
        logging.getLogger("amf.stacks").warning("kept")
    assert [(r.name, r.levelno) for r in caplog.records] == [("amf.stacks", logging.WARNING)]
