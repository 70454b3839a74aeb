"""Docs that tests keep honest: every setting, command, endpoint, error code and route is documented."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer

from accord import app as app_module
from accord.cli import app as cli_app
from accord.config import Settings
from accord.ingest.schemas import REQUEST_MODELS

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
SRC = ROOT / "src" / "accord"


def doc(name: str) -> str:
    return (DOCS / name).read_text()


def commands(group: Any, path: tuple[str, ...] = ("accord",)) -> Iterator[tuple[tuple[str, ...], Any]]:
    """Every command and sub-command of a Click/Typer group, depth first."""
    for name, command in sorted(group.commands.items()):
        yield (*path, name), command
        if hasattr(command, "commands"):
            yield from commands(command, (*path, name))


def error_codes(*files: str) -> set[str]:
    """Codes raised as SpecError("code", ...) / ApiError(status, "code", ...) / error_response(status, "code", ...)."""
    pattern = re.compile(
        r'(?:SpecError\(\s*|CatalogueError\(\s*|(?:ApiError|ConsentError|UnmergeError|LinkageError|JourneyError|error_response)\(\s*\d+,\s*)"([a-z_]+)"'
    )
    found: set[str] = set()
    for name in files:
        found.update(pattern.findall((SRC / name).read_text()))
    return found


@pytest.mark.parametrize("field", sorted(Settings.model_fields))
def test_every_setting_is_documented(field: str) -> None:
    assert f"ACCORD_{field.upper()}" in doc("operations.md")


@pytest.mark.parametrize("path", [" ".join(path) for path, _ in commands(typer.main.get_command(cli_app))])
def test_every_command_is_documented(path: str) -> None:
    assert f"`{path}" in doc("operations.md")


def test_every_command_option_is_documented() -> None:
    operations = doc("operations.md")
    missing = [
        f"{' '.join(path)} {opt}"
        for path, command in commands(typer.main.get_command(cli_app))
        for param in command.params
        if param.param_type_name == "option" and not getattr(param, "hidden", False)
        for opt in param.opts
        if opt not in operations
    ]
    assert not missing


@pytest.mark.parametrize("endpoint", sorted(REQUEST_MODELS))
def test_every_tracking_endpoint_is_documented(endpoint: str) -> None:
    assert f"`POST /v1/{endpoint}`" in doc("api.md")


def test_the_error_code_scan_finds_codes() -> None:
    assert {"missing_field", "unauthorized", "log_unavailable", "profile_not_found"} <= error_codes(
        "ingest/spec.py", "ingest/api.py", "profiles/api.py"
    )


@pytest.mark.parametrize(
    "code",
    sorted(
        error_codes(
            "ingest/spec.py",
            "ingest/api.py",
            "profiles/api.py",
            "security/auth.py",
            "app.py",
            "errors.py",
            "consent/api.py",
            "consent/service.py",
            "consent/catalogue.py",
            "consent/capture.py",
            "identity/api.py",
            "identity/history.py",
            "sources/api.py",
            "segments/api.py",
            "segments/service.py",
            "journeys/api.py",
            "journeys/service.py",
            "identity/linkage.py",
        )
        | {"not_found", "method_not_allowed"}
    ),
)
def test_every_error_code_is_documented(code: str) -> None:
    assert f"`{code}`" in doc("api.md")


def test_every_route_is_documented(tmp_path: Path) -> None:
    application = app_module.create_app(Settings(data_dir=tmp_path))
    try:
        paths = sorted(application.openapi()["paths"])
    finally:
        application.state.runtime.close()
    api = doc("api.md")
    assert paths
    assert [path for path in paths if path not in api] == []
    assert "/openapi.json" in api


def test_readme_starts_with_the_two_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    first_block = readme.split("```")[1]
    assert "make run" in first_block
    assert "make test" in first_block
    for page in ("quickstart", "concepts", "api", "operations", "architecture", "consent", "segments", "journeys"):
        assert f"docs/{page}.md" in readme
