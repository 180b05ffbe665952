"""The module map (amf/__init__.py and README.md, "Package layout") names every module, and only those."""

from __future__ import annotations

import re

from conftest import ROOT

import amf


def _modules() -> set[str]:
    return {path.stem for path in (ROOT / "amf").glob("*.py")} - {"__init__", "__main__"}


def test_package_docstring_maps_every_module() -> None:
    mapped = set(re.findall(r"^    (\w+) +\S", amf.__doc__, flags=re.M))
    assert mapped == _modules()


def test_readme_maps_every_module() -> None:
    readme = (ROOT / "README.md").read_text()
    layout = readme[readme.index("## Package layout") : readme.index("## Training")]
    table = "\n".join(line for line in layout.splitlines() if line.startswith("|"))
    named = set(re.findall(r"`(\w+)`", table))
    assert named >= _modules()
    assert named - _modules() <= {"assemble", "create", "Plan"}  # things named inside a module's line
