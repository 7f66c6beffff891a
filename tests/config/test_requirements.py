"""The runtime lock (what the Docker image installs) holds no test tools; the dev lock adds them."""

from __future__ import annotations

import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
TOOLS = {"pytest", "pytest-django", "ruff", "playwright", "mypy", "schemathesis", "factory-boy"}


def pins(path: Path) -> dict[str, str]:
    found = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith(("#", "-r")):
            name, version = line.split("==")
            found[canonicalize_name(name)] = version
    return found


def test_the_runtime_lock_pins_every_dependency_and_no_test_tool() -> None:
    runtime = pins(ROOT / "requirements.txt")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for dependency in project["dependencies"]:
        assert canonicalize_name(Requirement(dependency).name) in runtime, dependency
    assert not TOOLS & set(runtime)
    assert "requirements-dev.txt" not in (ROOT / "Dockerfile").read_text()


def test_the_dev_lock_adds_the_tools_on_top_of_the_runtime_lock() -> None:
    dev_file = ROOT / "requirements-dev.txt"
    assert "-r requirements.txt" in dev_file.read_text().splitlines()
    dev = pins(dev_file)
    assert set(dev) >= TOOLS
    assert not set(dev) & set(pins(ROOT / "requirements.txt"))
    for tool in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]["test"]:
        assert canonicalize_name(Requirement(tool).name) in dev, tool
