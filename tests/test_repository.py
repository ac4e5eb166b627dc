"""The repository carries what its own test command needs, with the notices that let it carry it."""

from __future__ import annotations

import tomllib
from pathlib import Path

from conftest import REALWORLD

ROOT = Path(__file__).resolve().parents[1]


def test_realworld_corpus_lives_inside_the_repository() -> None:
    # A fresh clone with nothing beside it must pass the README's test command.
    assert REALWORLD.resolve().is_relative_to(ROOT), REALWORLD
    folders = sorted(p for p in REALWORLD.iterdir() if p.is_dir())
    assert [f.name for f in folders] == ["flipt-mysql", "harbor-postgres"]
    for folder in folders:
        source = (folder / "SOURCE.md").read_text()
        assert "Repository:" in source and "License:" in source, folder
        assert (folder / "LICENSE").stat().st_size > 1000, folder
        assert list(folder.glob("*.sql")), folder


def test_project_declares_its_license() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "Apache-2.0"
    assert "Apache License" in (ROOT / "LICENSE").read_text().splitlines()[0] + (ROOT / "LICENSE").read_text()[:200]
    # The GPL-3.0 fixture must never ride in the distribution: only the package is.
    assert project.get("license-files") == ["LICENSE"]
