"""Make this machine's pip package sources visible to `podman build`, without baking them in.

Our CI machines keep wheels on local disk (pip's `find-links` and `file://` extra indexes, as
`pip config list` names them) and reach PyPI only through a machine-specific CA bundle. This
script writes a pip.conf naming those sources (to be mounted at /etc/pip.conf during the build)
and prints the host folders that must be mounted read-only at the same paths, one per line.
The image itself never sees them: `podman build --volume` mounts exist only while RUN steps run.

Usage: python3 docker/pip_sources.py BUILD_PIP_CONF > folders.txt
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
_SOURCE_KEYS = ("find-links", "index-url", "extra-index-url")


def pip_settings() -> dict[str, str]:
    """`pip config list` as {key: value}; environment entries (`:env:.x`) override files."""
    listing = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, check=False
    ).stdout
    settings: dict[str, str] = {}
    for line in sorted(listing.splitlines(), key=lambda entry: entry.startswith(":env:")):
        key, _, value = line.partition("=")
        settings[key.rsplit(".", 1)[-1]] = value.strip("'\"")
    return settings


def is_remote(source: str) -> bool:
    return "://" in source and not source.startswith("file://")


def local_folder(source: str) -> Path | None:
    """The host folder behind a local source (None if absent); a `.../simple` index also needs
    its sibling `files/` folder, so the index's parent is mounted."""
    path = Path(urlparse(source).path) if source.startswith("file://") else Path(source)
    if is_remote(source) or not path.is_dir():
        return None
    return path.parent if path.name == "simple" else path


def main(conf_path: Path) -> int:
    settings = pip_settings()
    lines = ["[global]", f"cert = {CA_BUNDLE}"]
    folders: list[Path] = []
    for key in _SOURCE_KEYS:
        kept = []
        for source in settings.get(key, "").split():
            folder = local_folder(source)
            if folder and folder not in folders:
                folders.append(folder)
            if folder or is_remote(source):
                kept.append(source)
        if kept:
            lines.append(f"{key} = {' '.join(kept)}")
    conf_path.write_text("\n".join(lines) + "\n")
    print("\n".join(str(folder) for folder in folders))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(Path(sys.argv[1])))
