"""Plans: no slide on both sides, stratified, deterministic, leave-one-domain-out holds the domain out."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import shared_data

from amf import dataset
from amf.errors import InputError
from amf.plan import ALL, Plan, load_plan, make_plan, save_plan, slug


def _samples(n_slides: int = 40, per_slide: int = 5) -> list[dataset.Sample]:
    rng = np.random.default_rng(1)
    samples = []
    for slide in range(n_slides):
        domain = ("a", "b", "c")[slide % 3]
        for k in range(per_slide):
            label = int(rng.random() < 0.25)
            samples.append(
                dataset.Sample(f"{slide}/{k}", "x.png", label, domain, f"S{slide}", "sc", "sp", "src")
            )
    return samples


@pytest.fixture
def table(tmp_path):
    samples = _samples()
    return dataset.save_table(samples, tmp_path / "t.csv"), samples


def _check_plan(plan: Plan, samples: list[dataset.Sample]) -> None:
    """Every fold: no slide leakage; folds partition the non-held-out crops; test is one domain."""
    by_id = {s.id: s for s in samples}
    for domain, split in plan.domains.items():
        kept = [
            s.id for s in samples if plan.domain_column is None or getattr(s, plan.domain_column) != domain
        ]
        assert sorted(i for fold in split.folds for i in fold) == sorted(kept)
        assert not set(split.test) & set(kept)
        for fold in range(plan.n_folds):
            train, val = plan.split(domain, fold)
            assert not {by_id[i].slide for i in train} & {by_id[i].slide for i in val}
            assert not set(train) & set(split.test)


def test_leave_one_domain_out_plan(table):
    path, samples = table
    plan = make_plan(samples, table=path, domain_column="cancer_type", n_folds=5, seed=0)
    assert list(plan.domains) == ["a", "b", "c"]
    assert len(plan.tasks()) == 15
    assert {by.cancer_type for by in samples if by.id in plan.domains["b"].test} == {"b"}
    _check_plan(plan, samples)


def test_all_domains_plan_is_stratified(table):
    path, samples = table
    plan = make_plan(samples, table=path, domain_column=None, n_folds=5, seed=0)
    assert list(plan.domains) == [ALL] and plan.domains[ALL].test == ()
    _check_plan(plan, samples)
    labels = {s.id: s.label for s in samples}
    overall = np.mean(list(labels.values()))
    for fold in plan.domains[ALL].folds:
        assert np.mean([labels[i] for i in fold]) == pytest.approx(overall, abs=0.1)


def test_plan_is_deterministic_for_a_seed_and_round_trips(table, tmp_path):
    path, samples = table
    plan = make_plan(samples, table=path, domain_column=None, seed=3)
    assert make_plan(samples, table=path, domain_column=None, seed=3) == plan
    assert make_plan(samples, table=path, domain_column=None, seed=4) != plan
    save_plan(plan, tmp_path / "plan.json")
    assert load_plan(tmp_path / "plan.json") == plan


def test_plan_errors_name_the_problem(table, tmp_path):
    path, samples = table
    with pytest.raises(InputError, match="domain column must be one of"):
        make_plan(samples, table=path, domain_column="colour")
    with pytest.raises(InputError, match="need at least 50 slides"):
        make_plan(samples, table=path, domain_column=None, n_folds=50)
    plan = make_plan(samples, table=path, domain_column="cancer_type")
    with pytest.raises(InputError, match=r"choose from \['a', 'b', 'c'\]"):
        plan.split("d", 0)
    with pytest.raises(InputError, match="choose from 0..4"):
        plan.split("a", 5)
    (tmp_path / "bad.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(InputError, match="not a plan"):
        load_plan(tmp_path / "bad.json")


def test_real_amibr_scanner_plan(tmp_path):
    samples = dataset.read_amibr(shared_data("ami-br"), split="train")
    path = dataset.save_table(samples, tmp_path / "t.csv")
    plan = make_plan(samples, table=path, domain_column="scanner")
    assert list(plan.domains) == ["Aperio CS2", "Hamamatsu S360", "Hamamatsu XR", "TUPAC16"]
    _check_plan(plan, samples)
    labels = {s.id: s.label for s in samples}
    for split in plan.domains.values():
        kept = [labels[i] for fold in split.folds for i in fold]
        for fold in split.folds:  # whole slides move together, so the match is close, not exact
            assert np.mean([labels[i] for i in fold]) == pytest.approx(np.mean(kept), abs=0.05)


def test_slug():
    assert slug("Hamamatsu S360") == "hamamatsu-s360"
    assert slug("canine cutaneous mast cell tumor") == "canine-cutaneous-mast-cell-tumor"
