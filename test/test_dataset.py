"""The unified dataset table: the paper's Table 1 from the real CSVs, layouts, duplicates, missing files."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from conftest import shared_data
from PIL import Image

from amf import dataset
from amf.__main__ import main
from amf.errors import InputError

# Qi et al. 2025, Table 1 (mitoses, AMF, NMF per cancer type) = MIDOG25 + AMi-Br minus duplicates.
TABLE_1 = {
    "canine cutaneous mast cell tumor": (2327, 351, 1976),
    "canine lung cancer": (855, 110, 745),
    "canine lymphoma": (3959, 317, 3642),
    "canine soft tissue sarcoma": (1286, 210, 1076),
    "human breast cancer": (3722, 832, 2890),
    "human melanoma": (1150, 271, 879),
    "human neuroendocrine tumor": (639, 85, 554),
    "Total": (13938, 2176, 11762),
}
# data README: AMi-Br per domain (atypical, normal)
AMIBR_DOMAINS = {
    "Hamamatsu XR": (105, 346),
    "Hamamatsu S360": (127, 455),
    "Aperio CS2": (172, 516),
    "TUPAC16": (428, 1571),
}


def _unified() -> list[dataset.Sample]:
    midog = dataset.read_midog25(shared_data("midog25", "MIDOG25_Atypical_Classification_Train_Set.csv"))
    return dataset.unify(midog, dataset.read_amibr(shared_data("ami-br")))


def test_real_csvs_reproduce_table_1():
    rows = {name: counts for name, *counts in dataset.summary(_unified())}
    assert {name: tuple(counts) for name, counts in rows.items()} == TABLE_1


def test_duplicates_dropped_are_the_midog21_part_of_amibr():
    unified = _unified()
    sources = {s.source for s in unified}
    assert dataset.AMIBR_MIDOG21 not in sources and dataset.AMIBR_TUPAC16 in sources
    assert len({s.id for s in unified}) == len(unified)


def test_amibr_domains_and_published_split():
    everything = dataset.read_amibr(shared_data("ami-br"))
    by_scanner = {name: (amf, nmf) for name, _, amf, nmf in dataset.summary(everything, "scanner")[:-1]}
    assert by_scanner == AMIBR_DOMAINS
    train = dataset.read_amibr(shared_data("ami-br"), split="train")
    test = dataset.read_amibr(shared_data("ami-br"), split="test")
    assert (len(train), len(test)) == (2894, 826)
    assert not {s.slide for s in train} & {s.slide for s in test}
    assert all(Path(s.image).is_file() for s in test)


def test_midog25_scanners_agree_with_amibr_slide_numbers():
    midog = dataset.read_midog25(shared_data("midog25", "MIDOG25_Atypical_Classification_Train_Set.csv"))
    by_key = {(s.slide, s.x, s.y): s for s in midog}
    amibr = [s for s in dataset.read_amibr(shared_data("ami-br")) if s.source == dataset.AMIBR_MIDOG21]
    assert all(by_key[(s.slide, s.x, s.y)].scanner == s.scanner for s in amibr)
    assert all(by_key[(s.slide, s.x, s.y)].label == s.label for s in amibr)


def test_dataset_command_prints_table_and_reports_missing_images(tmp_path, capsys, caplog):
    midog = shared_data("midog25", "MIDOG25_Atypical_Classification_Train_Set.csv")
    argv = [
        "dataset",
        "--midog25",
        str(midog),
        "--amibr",
        str(shared_data("ami-br")),
        "--out",
        str(tmp_path / "t.csv"),
    ]
    with caplog.at_level(logging.WARNING):
        assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "| Total | 13938 | 2176 | 11762 | 15.6% |" in printed
    assert "| Canine lymphoma | 3959 | 317 | 3642 | 8.0% |" in printed
    assert "11939 of 13938 image files missing" in caplog.text
    assert "the table keeps their labels; --link and training skip them" in caplog.text
    assert len(dataset.load_table(tmp_path / "t.csv")) == 13938
    assert main([*argv, "--strict"]) == 2


def _write_crop(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(path)


def test_folder_layout(tmp_path):
    for name in ("Atypical/a.png", "normal/sub/b.png", "normal/c.jpg"):
        _write_crop(tmp_path / "crops" / name)
    (tmp_path / "crops" / "normal" / "notes.txt").write_text("not a crop")
    samples = dataset.read_folder(tmp_path / "crops")
    assert sorted((s.id, s.label) for s in samples) == [
        ("crops/Atypical/a.png", 1),
        ("crops/normal/c.jpg", 0),
        ("crops/normal/sub/b.png", 0),
    ]
    (tmp_path / "crops" / "mitosis").mkdir()
    with pytest.raises(InputError, match="class folders must be among"):
        dataset.read_folder(tmp_path / "crops")


def _sample(id_: str, image: str, slide: str = "MIDOG/1.tiff", x: int = 5) -> dataset.Sample:
    return dataset.Sample(id_, image, 0, "t", slide, "s", "h", "src", x=x, y=7)


def test_unify_drops_later_rows_with_the_same_slide_and_position():
    first = [_sample("a/1", "1.png")]
    second = [
        _sample("b/1", "x.png"),
        _sample("b/2", "y.png", x=6),
        _sample("b/3", "z.png", slide="TUPAC16/1.tiff"),
    ]
    assert [s.id for s in dataset.unify(first, second)] == ["a/1", "b/2", "b/3"]
    with pytest.raises(InputError, match="appears twice"):
        dataset.unify(first, [_sample("a/1", "1.png", x=9)])


def test_missing_images_are_reported_excluded_or_fatal(tmp_path, caplog):
    _write_crop(tmp_path / "here.png")
    samples = [_sample("a", str(tmp_path / "here.png")), _sample("b", str(tmp_path / "gone.png"))]
    with caplog.at_level(logging.WARNING):
        assert dataset.check_images(samples) == samples[:1]
    assert "1 of 2 image files missing" in caplog.text and "gone.png" in caplog.text
    with pytest.raises(InputError, match="1 of 2 image files missing"):
        dataset.check_images(samples, strict=True)


def test_table_round_trip_and_soft_label(tmp_path):
    sample = dataset.Sample(
        "i", "p.png", 1, "t", "s", "sc", "sp", "src", 3, 4, votes_atypical=2, votes_total=3
    )
    dataset.save_table([sample], tmp_path / "t.csv")
    assert dataset.load_table(tmp_path / "t.csv") == [sample]
    assert sample.soft_label == pytest.approx(2 / 3)
    assert _sample("j", "q.png").soft_label == 0.0


def test_link_images_makes_an_inference_folder(tmp_path: Path) -> None:
    from amf.dataset import Sample, link_images

    crops = []
    for name in ("a.png", "b.png"):
        (tmp_path / "src" / name).parent.mkdir(exist_ok=True)
        (tmp_path / "src" / name).write_bytes(b"png")
        crops.append(
            Sample(
                id=name,
                image=str(tmp_path / "src" / name),
                label=0,
                cancer_type="t",
                slide="s",
                scanner="x",
                species="h",
                source="test",
            )
        )
    assert link_images(crops, tmp_path / "in") == 2
    assert sorted(p.name for p in (tmp_path / "in").iterdir()) == ["a.png", "b.png"]
    linked = tmp_path / "in" / "a.png"
    assert not linked.is_symlink() and linked.samefile(tmp_path / "src" / "a.png")  # inference reads it
    twin = Sample(**{**crops[0].__dict__, "id": "twin", "image": str(tmp_path / "other" / "a.png")})
    with pytest.raises(InputError, match="several samples share a file name"):
        link_images([*crops, twin], tmp_path / "in2")
