"""The package metadata ships every subpackage and the schemas (a wheel is not a checkout)."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_subpackage_and_the_schemas_are_listed_for_the_wheel() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    on_disk = {".".join(p.parent.relative_to(ROOT).parts)
               for p in (ROOT / "specrunner").rglob("__init__.py")}
    assert on_disk | {"specrunner._schemas"} == set(config["packages"])
    assert config["package-dir"]["specrunner._schemas"] == "schemas"
    shipped = {p.name for p in (ROOT / "schemas").glob("*.json")}
    assert {"spec.schema.json", "ideogram-3-3.request.schema.json"} <= shipped
