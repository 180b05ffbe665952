"""Cross-validation plans: leave-one-domain-out x k folds, or k folds over every domain.

A plan is computed once from the dataset table, seeded, and written to JSON; every model of a run
reads its (domain, fold) from that file. Folds come from scikit-learn's StratifiedGroupKFold:
stratified by label, grouped by slide, so no slide is on both sides of a split.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from amf.dataset import DOMAIN_COLUMNS, Sample
from amf.errors import InputError
from amf.writing import sha256_of, write_json_atomic

FORMAT = "amf-plan/1"
ALL = "all"


@dataclass(frozen=True)
class DomainSplit:
    """Held-out test ids (empty when nothing is held out) and the validation ids of each fold."""

    test: tuple[str, ...]
    folds: tuple[tuple[str, ...], ...]


@dataclass(frozen=True)
class Plan:
    table: str
    table_sha256: str
    domain_column: str | None
    n_folds: int
    seed: int
    domains: dict[str, DomainSplit]

    def tasks(self) -> list[tuple[str, int]]:
        """Every (domain, fold) to train, in a stable order."""
        return [(domain, fold) for domain in self.domains for fold in range(self.n_folds)]

    def split(self, domain: str, fold: int) -> tuple[list[str], list[str]]:
        """(train ids, validation ids) of one model; an unknown domain or fold lists the valid ones."""
        if domain not in self.domains:
            raise InputError(f"domain {domain!r} is not in the plan; choose from {list(self.domains)}")
        if not 0 <= fold < self.n_folds:
            raise InputError(f"fold {fold} is not in the plan; choose from 0..{self.n_folds - 1}")
        folds = self.domains[domain].folds
        train = [i for k, ids in enumerate(folds) if k != fold for i in ids]
        return train, list(folds[fold])

    def to_dict(self) -> dict:
        domains = {
            name: {"test": list(d.test), "folds": [list(f) for f in d.folds]}
            for name, d in self.domains.items()
        }
        return {
            "format": FORMAT,
            "table": self.table,
            "table_sha256": self.table_sha256,
            "domain_column": self.domain_column,
            "n_folds": self.n_folds,
            "seed": self.seed,
            "domains": domains,
        }


def make_plan(
    samples: Sequence[Sample],
    *,
    table: Path,
    domain_column: str | None = "cancer_type",
    n_folds: int = 5,
    seed: int = 0,
) -> Plan:
    """Leave-one-`domain_column`-out plan (None: one 'all' domain, nothing held out).

    Raises:
        InputError: an unknown domain column, or too few slides or domains for the split.
    """
    if domain_column is not None and domain_column not in DOMAIN_COLUMNS:
        raise InputError(f"domain column must be one of {DOMAIN_COLUMNS} or 'all', got {domain_column!r}")
    if domain_column is None:
        domains = {ALL: DomainSplit(test=(), folds=group_folds(samples, n_folds=n_folds, seed=seed))}
    else:
        names = sorted({getattr(s, domain_column) for s in samples})
        if len(names) < 2:
            raise InputError(f"leave-one-out over {domain_column!r} needs >= 2 domains, found {names}")
        domains = {}
        for name in names:
            rest = [s for s in samples if getattr(s, domain_column) != name]
            test = tuple(s.id for s in samples if getattr(s, domain_column) == name)
            domains[name] = DomainSplit(test=test, folds=group_folds(rest, n_folds=n_folds, seed=seed))
    return Plan(str(Path(table).resolve()), sha256_of(table), domain_column, n_folds, seed, domains)


def group_folds(samples: Sequence[Sample], *, n_folds: int, seed: int) -> tuple[tuple[str, ...], ...]:
    """Validation ids of each fold: stratified by label, grouped by slide (by crop when unknown)."""
    groups = [s.slide or s.id for s in samples]
    if len(set(groups)) < n_folds:
        raise InputError(f"{n_folds} folds need at least {n_folds} slides, found {len(set(groups))}")
    labels = np.array([s.label for s in samples])
    splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    folds = splitter.split(np.zeros(len(samples)), labels, groups)
    return tuple(tuple(samples[i].id for i in val) for _, val in folds)


def save_plan(plan: Plan, path: Path) -> Path:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return write_json_atomic(Path(path), plan.to_dict())


def load_plan(path: Path) -> Plan:
    """Read a plan written by `save_plan`; a malformed file names the problem."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
        if data.get("format") != FORMAT:
            raise ValueError(f"format {data.get('format')!r} is not {FORMAT!r}")
        domains = {
            name: DomainSplit(test=tuple(d["test"]), folds=tuple(tuple(f) for f in d["folds"]))
            for name, d in data["domains"].items()
        }
        return Plan(
            data["table"],
            data["table_sha256"],
            data["domain_column"],
            int(data["n_folds"]),
            int(data["seed"]),
            domains,
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise InputError(f"{path}: not a plan written by `amf plan` ({error})") from None


def slug(domain: str) -> str:
    """A folder name for a domain: 'canine lymphoma' -> 'canine-lymphoma'."""
    return re.sub(r"[^a-z0-9]+", "-", domain.lower()).strip("-") or "domain"
