"""requirements.lock pins every dependency pyproject.toml declares, at a version its range allows, and
the venv target and the images install from it (so a new release cannot change a fresh clone's run)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parents[2]


def pins() -> dict[str, Version]:
    found: dict[str, Version] = {}
    for line in (REPO / "requirements.lock").read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9._-]+)==(\S+)", line)
        if match:
            found[canonicalize_name(match.group(1))] = Version(match.group(2))
    return found


def declared() -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    requirements = [Requirement(r) for r in project["dependencies"]]
    for extra in ("dev", "e2e"):
        requirements += [Requirement(r) for r in project["optional-dependencies"][extra]]
    return [r for r in requirements if canonicalize_name(r.name) != canonicalize_name(project["name"])]


def test_every_declared_dependency_is_pinned_within_its_range() -> None:
    locked = pins()
    assert len(locked) >= 30
    for requirement in declared():
        name = canonicalize_name(requirement.name)
        assert name in locked, f"{requirement} is not in requirements.lock: run `make lock`"
        assert requirement.specifier.contains(locked[name], prereleases=True), \
            f"requirements.lock pins {name}=={locked[name]} outside {requirement}: run `make lock`"


def test_the_lock_holds_no_local_path_or_unpinned_line() -> None:
    for line in (REPO / "requirements.lock").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            assert "==" in line and "file:" not in line and "@" not in line, line


def test_venv_and_images_install_from_the_lock() -> None:
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"pip install .*-c requirements\.lock -e '\.\[dev,e2e\]'", makefile)
    assert re.search(r"^\$\(VENV\)/\.installed: pyproject\.toml requirements\.lock$", makefile, re.MULTILINE)
    for image in ("operator", "worker"):
        dockerfile = (REPO / "docker" / f"{image}.Dockerfile").read_text()
        assert f'-c requirements.lock ".[{image}]"' in dockerfile
        assert "requirements.lock" in (REPO / "docker" / f"{image}.Dockerfile.dockerignore").read_text()
