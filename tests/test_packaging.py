"""The package metadata ships every subpackage, the schemas and the examples (a wheel is not a
checkout), and a wheel installed into a fresh venv can start a campaign with `init`."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_every_subpackage_and_the_data_folders_are_listed_for_the_wheel() -> None:
    config = CONFIG["tool"]["setuptools"]
    on_disk = {".".join(p.parent.relative_to(ROOT).parts)
               for p in (ROOT / "specrunner").rglob("__init__.py")}
    data = {"specrunner._schemas", "specrunner._examples"}
    assert on_disk | data == set(config["packages"])
    assert config["package-dir"] == {"specrunner._schemas": "schemas",
                                     "specrunner._examples": "specs/examples"}
    shipped = {p.name for p in (ROOT / "schemas").glob("*.json")}
    assert {"spec.schema.json", "ideogram-3-3.request.schema.json"} <= shipped


def test_metadata_says_who_what_and_where() -> None:
    project = CONFIG["project"]
    assert project["authors"] and project["license"] == "MIT"
    assert "Environment :: Console" in project["classifiers"]
    assert not any(c.startswith("License ::") for c in project["classifiers"])  # PEP 639
    assert set(project["urls"]) >= {"Homepage", "Source", "Issues"}


def build_wheel(dest: Path) -> Path:
    """The wheel of a copy of the source tree, built offline (no isolation: the test extra
    has setuptools and build), as `pip install .` would build it."""
    src = dest / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        ".git", ".venv", "out", "__pycache__", "*.egg-info", "build", "dist", ".pytest_cache",
        ".hypothesis", "bench", "tests"))
    proc = subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation",
                           "--outdir", str(dest / "dist"), str(src)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Package would be ignored" not in proc.stderr, proc.stderr
    (wheel,) = (dest / "dist").glob("specrunner-*.whl")
    return wheel


def test_a_wheel_in_a_fresh_venv_starts_a_campaign_with_init(tmp_path: Path) -> None:
    wheel = build_wheel(tmp_path)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                   timeout=120)
    py = venv / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "-q",
                    "--no-deps", "--no-index", str(wheel)], check=True, timeout=300)
    # The dependencies come from this environment (no network): its site-packages after the
    # venv's own, so specrunner itself is the wheel's.
    site = Path(subprocess.run([str(py), "-c", "import sysconfig; "
                                "print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    work = tmp_path / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}

    def sh(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(venv / "bin" / "specrunner"), *argv], cwd=work, env=env,
                              capture_output=True, text=True, timeout=300)

    where = subprocess.run([str(py), "-c", "import specrunner.starter as s; "
                            "print(s.__file__); print(s.EXAMPLES_DIR)"], cwd=work, env=env,
                           capture_output=True, text=True, check=True).stdout.split()
    assert all(Path(p).is_relative_to(venv) for p in where), where
    init = sh("init", "demo")
    assert init.returncode == 0, init.stdout + init.stderr
    assert init.stdout.startswith("wrote 9 file(s) in demo/: storefront-local.yaml, ")
    valid = sh("validate", "demo/storefront-local.yaml")
    assert valid.returncode == 0, valid.stdout + valid.stderr
    assert valid.stdout.splitlines()[-2:] == [
        "demo/storefront-local.yaml: valid (12 tasks)",
        "1 spec(s) checked: 1 valid, 0 invalid, 0 error(s), 1 warning(s)"]
    assert sh("completion", "bash").stdout.rstrip().endswith(
        "complete -o bashdefault -F _shtab_specrunner specrunner")
