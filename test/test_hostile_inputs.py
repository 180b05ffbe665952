"""Hostile and unusual inputs, run as the container runs them (`python inference.py`).

Every failing case must end with exit status 2, exactly one ERROR line that names the file and
the problem, no traceback, and nothing in the output folder. The cases that must succeed check
the output itself (manifests and options: test_hostile_settings.py; memory: test_hostile_memory.py).
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import FIXTURE_ENSEMBLE, ROOT, SAMPLE_INPUT
from hostile import assert_one_error_line, deep_json, mha_file, run_cli
from make_fixtures import synthetic_crops, write_stack
from PIL import Image

from amf import manifest, predict, stacks, writing

OUTSIDE = "outside-secret.png"  # a real crop outside the input folder: reading it would succeed
EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\nnewpath 0 0 moveto 8 8 lineto stroke\n%%EOF\n"


def crop(seed: int = 0) -> np.ndarray:
    return synthetic_crops(1, np.random.default_rng(seed))[0]


def gc_input(root: Path, relative_path: object = f"images/{stacks.SLUG}", stack: bool = True) -> Path:
    """The grand-challenge layout with one real stack; `relative_path` as inputs.json gives it."""
    folder = root / "images" / stacks.SLUG
    folder.mkdir(parents=True)
    if stack:
        write_stack(folder / "stack.tif", [crop(1), crop(2)])
    (root / "inputs.json").write_text(
        json.dumps([{"interface": {"slug": stacks.SLUG, "relative_path": relative_path}}])
    )
    return root


def sitk_write(path: Path, array: np.ndarray, *, vector: bool = True) -> Path:
    sitk.WriteImage(sitk.GetImageFromArray(array, isVector=vector), str(path), True)
    return path


def single(name: str, write: Callable[[Path], object]) -> Callable[[Path], Path]:
    """A builder for a one-file input folder."""

    def build(tmp: Path) -> Path:
        folder = tmp / "in"
        folder.mkdir()
        write(folder / name)
        return folder

    return build


def linked(tmp: Path, target: Path, link: Path) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(target)


def looped(link: Path) -> Path:
    """A link to itself: resolving it never ends."""
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(link)
    return link


def hop_out(tmp: Path) -> Path:
    """A link outside the input folder to the outside crop: a link to a link that leads out."""
    linked(tmp, outside(tmp), tmp / "hop.png")
    return tmp / "hop.png"


def outside(tmp: Path) -> Path:
    Image.fromarray(crop(3)).save(tmp / OUTSIDE)
    return tmp / OUTSIDE


def gc_with(change: Callable[[Path, Path], object], **layout) -> Callable[[Path], Path]:
    def build(tmp: Path) -> Path:
        root = gc_input(tmp / "in", **layout)
        change(tmp, root)
        return root

    return build


def fifo(path: Path) -> None:
    os.mkfifo(path)


def tiff_page(path: Path, array: np.ndarray) -> None:
    Image.fromarray(array).save(path, compression="tiff_adobe_deflate")


def float_stack(path: Path, pages: int) -> None:
    """A float32 TIFF of `pages` gray pages in [0, 1] but the last, which is NaN."""
    good, bad = (Image.fromarray(np.full((8, 8), value, np.float32)) for value in (0.5, np.nan))
    good.save(path, save_all=True, append_images=[good] * (pages - 2) + [bad])


# name -> (input builder, expected message; the file it names is checked by the message)
INPUT_CASES: dict[str, tuple[Callable[[Path], Path], str]] = {
    "missing input": (lambda tmp: tmp / "nowhere", r"nowhere: no such file or folder"),
    "empty folder": (single("", lambda p: None), r"in: no crops found"),
    "inputs.json missing": (gc_with(lambda t, r: (r / "inputs.json").unlink()), r"inputs\.json: missing"),
    "inputs.json not JSON": (
        gc_with(lambda t, r: (r / "inputs.json").write_text("{nope")),
        r"inputs\.json: not a list of input sockets \(JSONDecodeError\)",
    ),
    "inputs.json nested deep": (
        gc_with(lambda t, r: (r / "inputs.json").write_text(deep_json())),
        r"inputs\.json: not a list of input sockets \(RecursionError\)",
    ),
    "inputs.json an object": (
        gc_with(lambda t, r: (r / "inputs.json").write_text('{"interface": 1}')),
        r"inputs\.json: not a list of input sockets",
    ),
    "inputs.json huge": (
        gc_with(lambda t, r: (r / "inputs.json").write_text(" " * (stacks.MAX_INPUTS_JSON_BYTES + 1))),
        r"inputs\.json: larger than",
    ),
    "inputs.json links out": (
        gc_with(lambda t, r: ((r / "inputs.json").unlink(), linked(t, outside(t), r / "inputs.json"))),
        r"inputs\.json: leads outside the input folder",
    ),
    "relative_path null": (
        gc_with(lambda t, r: None, relative_path=None),
        r"inputs\.json: relative_path must be",
    ),
    "relative_path number": (
        gc_with(lambda t, r: None, relative_path=5),
        r"inputs\.json: relative_path must be",
    ),
    "relative_path absolute": (
        gc_with(lambda t, r: None, relative_path="/etc"),
        r"inputs\.json: relative_path must be a relative folder path, got '/etc'",
    ),
    "relative_path climbs out": (
        gc_with(lambda t, r: None, relative_path="../../.."),
        r"inputs\.json: relative_path must be a relative folder path",
    ),
    "interface folder links out": (
        gc_with(lambda t, r: (outside(t), linked(t, t, r / "elsewhere")), relative_path="elsewhere"),
        r"elsewhere: folder named in .*inputs\.json leads outside the input folder",
    ),
    "stack links out": (
        gc_with(lambda t, r: linked(t, outside(t), r / "images" / stacks.SLUG / "stack.tif"), stack=False),
        r"stack\.tif: leads outside the input folder",
    ),
    "stack is a fifo": (
        gc_with(lambda t, r: fifo(r / "images" / stacks.SLUG / "stack.tif"), stack=False),
        r"stack\.tif: not a regular file",
    ),
    "stack is a folder": (
        gc_with(lambda t, r: (r / "images" / stacks.SLUG / "stack.tif").mkdir(), stack=False),
        r"stack\.tif: not a regular file",
    ),
    "stack links to itself": (
        gc_with(lambda t, r: looped(r / "images" / stacks.SLUG / "stack.tif"), stack=False),
        r"stack\.tif: a link loop",
    ),
    "stack links to nothing": (
        gc_with(lambda t, r: linked(t, r / "gone.tif", r / "images" / stacks.SLUG / "x.tif"), stack=False),
        r"x\.tif: a link to nothing",
    ),
    "interface folder links to itself": (
        gc_with(lambda t, r: looped(r / "loop"), relative_path="loop"),
        r"loop: a link loop",
    ),
    "input folder links to itself": (lambda tmp: looped(tmp / "in"), r"in: a link loop"),
    "no stack file": (gc_with(lambda t, r: None, stack=False), r"cropouts: no stack file"),
    "two stack files": (
        gc_with(
            lambda t, r: shutil.copy(
                r / "images" / stacks.SLUG / "stack.tif", r / "images" / stacks.SLUG / "b.mha"
            )
        ),
        r"several stack files",
    ),
    "crop links out": (
        lambda tmp: single("a.png", lambda p: linked(tmp, outside(tmp), p))(tmp),
        r"a\.png: leads outside",
    ),
    "crop links to itself": (single("self.tiff", looped), r"self\.tiff: a link loop"),
    "crop links to nothing": (
        single("gone.png", lambda p: linked(p.parent, p.parent / "nothing.png", p)),
        r"gone\.png: a link to nothing",
    ),
    "crop links to a link out": (
        lambda tmp: single("a.png", lambda p: linked(tmp, hop_out(tmp), p))(tmp),
        r"a\.png: leads outside",
    ),
    "crop links to a device": (
        single("zero.png", lambda p: linked(p.parent, Path("/dev/zero"), p)),
        r"zero\.png: leads outside the input folder",
    ),
    "folder links out only": (
        lambda tmp: single("sub", lambda p: (outside(tmp), linked(tmp, tmp, p)))(tmp),
        r"in: no crops found",
    ),
    "EPS named .tif": (single("eps.tif", lambda p: p.write_bytes(EPS)), r"eps\.tif: cannot read image"),
    "GIF named .png": (
        single("anim.png", lambda p: Image.fromarray(crop()).save(p, format="GIF")),
        r"anim\.png: cannot read image",
    ),
    "garbage .png": (
        single("junk.png", lambda p: p.write_bytes(b"\x89PNG junk")),
        r"junk\.png: cannot read image",
    ),
    "empty .tif": (single("empty.tif", lambda p: p.write_bytes(b"")), r"empty\.tif: cannot read image"),
    "truncated .tif": (
        single("cut.tif", lambda p: (write_stack(p, [crop(), crop(1)]), p.write_bytes(p.read_bytes()[:900]))),
        r"cut\.tif: cannot read image",
    ),
    "page over the pixel limit": (
        single("wide.png", lambda p: Image.new("L", (8192, 4096)).save(p)),
        r"wide\.png page 0: 8192 x 4096 pixels, more than the limit",
    ),
    "bilevel TIFF bomb": (
        single("bomb.tif", lambda p: Image.new("1", (8192, 8192)).save(p, compression="group4")),
        r"bomb\.tif page 0: 8192 x 8192 pixels, more than the limit",
    ),
    "float RGB TIFF (Pillow cannot decode it)": (
        single("f.tif", lambda p: sitk_write(p, np.full((16, 16, 3), 0.5, np.float32))),
        r"f\.tif: cannot read image",
    ),
    "mha data elsewhere": (
        single("x.mha", lambda p: mha_file(p, {"ElementDataFile": "../../../etc/passwd"})),
        r"x\.mha: pixel data in another file \(ElementDataFile = '\.\./\.\./\.\./etc/passwd'\)",
    ),
    "mha data list": (
        single("x.mha", lambda p: mha_file(p, {"ElementDataFile": "LIST"})),
        r"x\.mha: pixel data in another file",
    ),
    "mha RGB crop as 3-D gray": (
        single("rgb.mha", lambda p: sitk_write(p, crop(), vector=False)),
        r"rgb\.mha: a 3-D gray image 3 pixels wide looks like one RGB crop",
    ),
    "mha 4-D": (
        single("x.mha", lambda p: mha_file(p, {"DimSize": "8 8 8 8"})),
        r"x\.mha: DimSize must be 2 or 3",
    ),
    "mha zero pages": (
        single("x.mha", lambda p: mha_file(p, {"DimSize": "8 8 0"})),
        r"x\.mha: DimSize must be",
    ),
    "mha too many pages": (
        single("x.mha", lambda p: mha_file(p, {"DimSize": f"8 8 {stacks.MAX_PAGES + 1}"})),
        rf"x\.mha: {stacks.MAX_PAGES + 1} pages, more than the limit",
    ),
    "mha huge pages": (
        single("x.mha", lambda p: mha_file(p, {"DimSize": "60000 60000"})),
        r"x\.mha page 0: 60000 x 60000 pixels, more than the limit",
    ),
    "mha page bytes": (
        single(
            "x.mha",
            lambda p: mha_file(
                p, {"DimSize": "4096 4096", "ElementType": "MET_DOUBLE", "ElementNumberOfChannels": "3"}
            ),
        ),
        r"x\.mha: 402653184 bytes a page, more than the limit",
    ),
    "mha element type": (
        single("x.mha", lambda p: mha_file(p, {"ElementType": "MET_LONG_LONG"})),
        r"x\.mha: ElementType 'MET_LONG_LONG' is not one of",
    ),
    "mha five channels": (
        single("x.mha", lambda p: mha_file(p, {"ElementNumberOfChannels": "5"})),
        r"x\.mha: ElementNumberOfChannels must be 1-4",
    ),
    "mha sizes not numbers": (
        single("x.mha", lambda p: mha_file(p, {"DimSize": "8 eight"})),
        r"x\.mha: DimSize must be integers",
    ),
    "mha not a header": (
        single("x.mha", lambda p: p.write_bytes(b"\x00" * 100)),
        r"x\.mha: not a MetaImage header",
    ),
    "mha truncated data": (
        single("x.mha", lambda p: mha_file(p, {"DimSize": "8 8 2"}, b"\x01" * 100)),
        r"x\.mha: pixel data ends in page 1 of 2",
    ),
    "float page above 1": (
        single("f.tif", lambda p: tiff_page(p, np.full((16, 16), 1.5, np.float32))),
        r"f\.tif page 0: float pixels must lie in \[0, 1\]",
    ),
    "float page NaN": (
        single("n.mha", lambda p: sitk_write(p, np.full((16, 16), np.nan, np.float32), vector=False)),
        r"n\.mha page 0: page contains NaN",
    ),
    "negative integers": (
        single("neg.mha", lambda p: sitk_write(p, np.full((16, 16), -5, np.int16), vector=False)),
        r"neg\.mha page 0: integer pixels must lie in 0-65535",
    ),
    "last of many pages NaN": (
        single("many.tif", lambda p: float_stack(p, 40)),
        r"many\.tif page 39: page contains NaN",
    ),
    "last of several files NaN": (
        single("b.tif", lambda p: (tiff_page(p.with_name("a.tif"), crop()), float_stack(p, 3))),
        r"b\.tif page 2: page contains NaN",
    ),
}


# name -> (input builder, expected message) for 8- or 16-bit pages whose header is sound but whose
# data is corrupt: found as each page is decoded, once, to be classified, so after the model loaded.
DECODE_CASES: dict[str, tuple[Callable[[Path], Path], str]] = {
    "mha corrupt zlib": (
        single("x.mha", lambda p: mha_file(p, {"CompressedData": "True"}, b"\x78\x9c" + b"\xff" * 40)),
        r"x\.mha: corrupt compressed pixel data",
    ),
}


@pytest.mark.parametrize("case", sorted(INPUT_CASES | DECODE_CASES))
def test_bad_input_is_one_error_line_with_nothing_written(tmp_path: Path, case: str) -> None:
    """INPUT_CASES fail before any weights are read; DECODE_CASES only as their page is classified."""
    build, message = (INPUT_CASES | DECODE_CASES)[case]
    input_path = build(tmp_path)
    output = tmp_path / "out"
    result = run_cli("--input", str(input_path), "--output", str(output), "--model", str(FIXTURE_ENSEMBLE))
    assert_one_error_line(result, message)
    assert not output.exists()
    if case in INPUT_CASES:
        assert "loaded" not in result.stderr


def test_failed_run_removes_the_previous_result(tmp_path: Path) -> None:
    output = tmp_path / "out"
    assert predict.run(SAMPLE_INPUT, output, FIXTURE_ENSEMBLE) == 6
    (output / "notes.txt").write_text("the user's own file")
    (output / writing.CSV_NAME).write_text("an older folder run's table")
    broken = single("junk.png", lambda p: p.write_bytes(b"junk"))(tmp_path)
    result = run_cli("--input", str(broken), "--output", str(output), "--model", str(FIXTURE_ENSEMBLE))
    assert_one_error_line(result, r"junk\.png: cannot read image")
    assert sorted(p.name for p in output.iterdir()) == ["notes.txt"]


def test_names_a_spreadsheet_would_run_and_undecodable_names(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    names = ['=HYPERLINK("x","y").png', "@cmd.png", os.fsdecode(b"caf\xe9.png")]
    for seed, name in enumerate(names):
        Image.fromarray(crop(seed)).save(folder / name, format="PNG")
    assert predict.run(folder, tmp_path / "out", FIXTURE_ENSEMBLE) == 3
    with open(tmp_path / "out" / writing.CSV_NAME, encoding="utf-8") as handle:
        cells = sorted(row["file"] for row in csv.DictReader(handle))
    assert cells == sorted(["'" + names[0], "'" + names[1], "caf\\xe9.png"])


def test_float_and_16_bit_pages_read_like_their_8_bit_twin(tmp_path: Path) -> None:
    """The one rule per pixel type: float in [0, 1] and 16-bit give the uint8 page's answer."""
    page = crop(5)
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(page).save(folder / "a_uint8.png")
    sitk_write(folder / "b_float.mha", page.astype(np.float32) / 255.0)
    sitk_write(folder / "c_uint16.mha", page.astype(np.uint16) * 257)
    predict.run(folder, tmp_path / "out", FIXTURE_ENSEMBLE)
    records = json.loads((tmp_path / "out" / writing.OUTPUT_NAME).read_text())
    assert [r["confidence"] for r in records] == [records[0]["confidence"]] * 3


def test_mha_pages_and_channels_follow_the_header(tmp_path: Path) -> None:
    """One RGB crop saved with channels is one page; a 3-D RGB stack is one page per z slice."""
    sitk_write(tmp_path / "one.mha", crop(1))
    assert len(stacks.read_pages(tmp_path / "one.mha")) == 1
    stack = np.stack([crop(k) for k in range(3)])
    sitk_write(tmp_path / "stack.mha", stack)
    np.testing.assert_array_equal(np.stack(stacks.read_pages(tmp_path / "stack.mha")), stack)
    array = (np.arange(2 * 9 * 7, dtype=">u2").reshape(2, 9, 7) * 300).astype(">u2")
    data = array.tobytes()
    mha_file(
        tmp_path / "msb.mha",
        {
            "NDims": "3",
            "DimSize": "7 9 2",
            "ElementType": "MET_USHORT",
            "BinaryDataByteOrderMSB": "True",
            "CompressedData": "True",
        },
        zlib.compress(data),
    )
    pages = stacks.read_pages(tmp_path / "msb.mha")
    expected = (array.astype(np.uint32) * 255 + 32767) // 65535
    np.testing.assert_array_equal(np.stack(pages)[..., 0], expected)


def test_no_network_and_no_program_started(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Inference on good and hostile input opens no socket from Python and starts no program
    (native code, ONNX Runtime's included: test_no_packet_leaves_a_long_run)."""
    calls: list[str] = []

    def refuse(name: str):
        def call(*args, **kwargs):
            calls.append(name)
            raise OSError(f"{name} is not allowed in this test")

        return call

    for module, name in [
        (socket.socket, "connect"),
        (socket, "create_connection"),
        (socket, "getaddrinfo"),
        (subprocess.Popen, "__init__"),
        (os, "system"),
        (os, "posix_spawn"),
        (os, "execv"),
    ]:
        monkeypatch.setattr(module, name, refuse(name))
    eps = tmp_path / "in" / "eps.tif"
    eps.parent.mkdir()
    eps.write_bytes(EPS)
    with Image.open(eps) as image:  # Pillow alone would take it, and run Ghostscript to load it
        assert image.format == "EPS"
    with pytest.raises(predict.InputError, match="eps.tif: cannot read image"):
        predict.run(eps.parent, tmp_path / "out", FIXTURE_ENSEMBLE)
    predict.run(SAMPLE_INPUT, tmp_path / "torch", FIXTURE_ENSEMBLE, backend="torch")
    shipped = predict.BAKED_MODEL_DIR
    if manifest.load(shipped).onnx:  # the shipped ensemble's graphs: the default back end
        predict.run(SAMPLE_INPUT, tmp_path / "onnx", shipped, backend="onnx")
    assert calls == []


# ONNX Runtime's telemetry first resolved its host about 9 s after the session opened (issue 22).
NETWORK_WATCH_S = 15.0
# Variables that switch ONNX Runtime's telemetry off by themselves (a CI runner sets CI=true):
# removed from the run, so that the test sees what a user's run does and can fail.
ORT_TELEMETRY_SWITCHES = (
    "ORT_DISABLE_TELEMETRY",
    "ORT_RUNNING_UNIT_TESTS",
    *("CI", "TF_BUILD", "GITHUB_ACTIONS", "GITLAB_CI", "CIRCLECI", "TRAVIS", "JENKINS_URL"),
    *("CODEBUILD_BUILD_ID", "BUILDKITE", "TEAMCITY_VERSION", "APPVEYOR", "BITBUCKET_BUILD_NUMBER"),
    "SYSTEM_TEAMFOUNDATIONCOLLECTIONURI",
)
# every thread and child; only the traced calls stop the process (seccomp), so it runs near full speed
TRACE = ["-f", "--seccomp-bpf", "-ttt", "-e", "trace=%network"]
NETWORK_CALL = re.compile(r"^\d+\s+([\d.]+)\s+(?:socket|connect|bind|sendto|sendmsg|sendmmsg)\((.*)")


def strace_or_skip() -> str:
    """strace, where it is installed and may trace (ptrace can be denied in a container)."""
    strace = shutil.which("strace")
    if strace is None:
        pytest.skip("strace is not installed (.ci/run installs it: apt-get install strace)")
    probe = subprocess.run([strace, *TRACE, "-o", os.devnull, "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"strace cannot trace here: {probe.stderr.strip()[:200]}")
    return strace


def serving_python() -> str:
    """The serving environment's python (the CPU image's packages) where there is one, else this one."""
    serve = ROOT / ".venv-serve" / "bin" / "python"
    return str(serve) if serve.exists() else sys.executable


def network_calls(trace: Path) -> list[tuple[float, str]]:
    """(time, strace line) of each socket made, or address used, in a family other than AF_UNIX."""
    calls = []
    for line in trace.read_text().splitlines():
        match = NETWORK_CALL.match(line)
        if match and re.search(r"\bAF_(?!UNIX\b)\w+", match.group(2)):
            calls.append((float(match.group(1)), line))
    return calls


@pytest.mark.slow
def test_no_packet_leaves_a_long_run(tmp_path: Path) -> None:
    """`python inference.py` on the shipped ensemble, alive at least 15 s, makes no network call
    from any thread (strace sees ONNX Runtime's native ones, which patching `socket` cannot) and
    leaves nothing in its home: ONNX Runtime's device id and event cache, which a later run uploads.
    The stack grows until one run lives long enough, whatever the machine's speed."""
    strace = strace_or_skip()
    home = tmp_path / "home"
    home.mkdir()
    env = {name: value for name, value in os.environ.items() if name not in ORT_TELEMETRY_SWITCHES}
    env |= {"HOME": str(home), "XDG_CACHE_HOME": str(home / ".cache")}
    crops = synthetic_crops(16, np.random.default_rng(0))
    pages, lived = len(crops), 0.0  # one batch: 21 s on our 2 shared CPU cores, start-up included
    while lived < NETWORK_WATCH_S:
        assert pages <= stacks.MAX_PAGES, f"{pages} crops needed to run {NETWORK_WATCH_S} s"
        run = tmp_path / f"{pages}-crops"
        run.mkdir()
        write_stack(run / "stack.tif", crops * (pages // len(crops)))
        trace = run / "strace.txt"
        command = [strace, *TRACE, "-o", str(trace), serving_python(), "inference.py", "--backend", "onnx"]
        command += ["--input", str(run / "stack.tif"), "--output", str(run / "out")]
        command += ["--model", str(predict.BAKED_MODEL_DIR)]
        started = time.time()
        result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
        lived = time.time() - started
        assert result.returncode == 0, result.stderr[-2000:]
        calls = network_calls(trace)
        assert not calls, (
            f"{len(calls)} network calls in a {lived:.0f} s run, the first {calls[0][0] - started:.1f} s "
            "after the start:\n" + "\n".join(line for _, line in calls[:6])
        )
        pages *= math.ceil(2 * NETWORK_WATCH_S / lived)
    left = sorted(str(path.relative_to(home)) for path in home.rglob("*"))
    assert not left, f"the run left files in its home: {left}"
