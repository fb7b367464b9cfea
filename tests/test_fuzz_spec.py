"""Fuzzing the spec loader: mutated and generated YAML never gets past it unexplained.

Whatever the bytes, `load_spec` either returns a Spec or raises SpecError whose every
diagnostic has a location inside the file; planning a loaded spec raises nothing but
SpecError or PlanLimitError; the CLI exits 0 or 2 with no traceback. Mutations start from
the example specs and tests/fixtures/specfiles.BASE_SPEC: byte flips, truncation, line
duplication and deletion, random indentation, other line endings, and inserted
YAML-significant text.
A spec is at most a few KiB here and the loader's budgets bound every expansion, so each
example is bounded work; a SIGALRM watchdog turns a real hang into a failure, not a stall.
"""

from __future__ import annotations

import re
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from fixtures.specfiles import BASE_SPEC, make_images, run_cli
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from specrunner.errors import PlanLimitError, SpecError
from specrunner.plan import build_plan
from specrunner.spec import load_spec

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "specs" / "examples").glob("*.yaml"))
SEEDS = [BASE_SPEC.encode()] + [p.read_bytes() for p in EXAMPLES]
SNIPPETS = [b"\t", b"  ", b"- ", b": ", b"&a ", b"*a", b"!!str ", b"!x ", b"<<: *a", b"{",
            b"}", b"[", b"]", b"'", b'"', b"#", b"%YAML 1.1\n", b"---\n", b"...\n", b"? ",
            b"|", b">-", b"\r", b"\r\n", b"\xef\xbb\xbf", b"\xc2\x85", b"\xe2\x80\xa8", b"\x00",
            b"\x01", b"\xff", b"{x}", b"{{", b"}}", b"NO", b"0755", b"1e3", b"2.0", b"~",
            b"numberResults: 20", b"repeat: 1000", b"exclude:", b"include:", b"id: a-r2",
            "é✓🙂".encode()]
BREAK = re.compile(rb"\r\n|\r|\n")
SETTINGS = settings(max_examples=200, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with the fixture images and the examples' images, so file checks run."""
    path = tmp_path_factory.mktemp("fuzz")
    make_images(path)
    shutil.copytree(ROOT / "specs" / "examples" / "images", path / "images",
                    dirs_exist_ok=True)
    return path


@pytest.fixture(autouse=True)
def watchdog() -> Iterator[None]:
    """Fail (never stall) if one example hangs: a guard far above any real run time."""
    def hung(signum: int, frame: Any) -> None:
        raise AssertionError("the loader hung on a fuzzed spec")
    old = signal.signal(signal.SIGALRM, hung)
    signal.alarm(120)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def lines_of(data: bytes) -> int:
    return len(BREAK.findall(data)) + 1


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "truncate", "dup", "delete", "indent", "insert",
                                     "newlines"]))
        lines = data.split(b"\n")
        if kind == "flip" and data:
            i = draw(st.integers(0, len(data) - 1))
            data[i] = draw(st.integers(0, 255))
        elif kind == "newlines":  # CRLF, CR, and what YAML 1.1 alone calls a line break
            new = draw(st.sampled_from([b"\r\n", b"\r", b"\xc2\x85", b"\xe2\x80\xa8"]))
            data = bytearray(data.replace(b"\n", new))
        elif kind == "truncate":
            del data[draw(st.integers(0, len(data))):]
        elif kind in ("dup", "delete", "indent") and lines:
            i = draw(st.integers(0, len(lines) - 1))
            if kind == "dup":
                lines.insert(i, lines[i])
            elif kind == "delete":
                del lines[i]
            else:
                pad = draw(st.sampled_from([b" ", b"  ", b"   ", b"\t", b""]))
                cut = draw(st.integers(0, 4))
                lines[i] = pad * draw(st.integers(0, 3)) + lines[i][cut:]
            data = bytearray(b"\n".join(lines))
        else:
            i = draw(st.integers(0, len(data)))
            data[i:i] = draw(st.sampled_from(SNIPPETS))
    return bytes(data)


scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70),
                    st.floats(allow_nan=True), st.text(max_size=20))
keys = st.one_of(st.sampled_from(["version", "name", "inputs", "prompts", "matrix",
                                  "variants", "budget", "defaults", "vars", "output",
                                  "repeat", "execution", "prices", "include", "exclude",
                                  "input", "prompt", "styleType", "numberResults", "id",
                                  "seed", "mask", "max_usd", "outputFormat", "shop_name"]),
                 st.text(max_size=8))
documents = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(keys, inner, max_size=5)), max_leaves=25)


@st.composite
def generated(draw: st.DrawFn) -> bytes:
    doc = draw(documents)
    style = draw(st.sampled_from([None, True, False]))
    text = yaml.safe_dump(doc, default_flow_style=style, allow_unicode=draw(st.booleans()))
    return text.encode()


def check_loader(folder: Path, data: bytes) -> None:
    path = folder / "fuzz.yaml"
    path.write_bytes(data)
    try:
        spec = load_spec(path)
    except SpecError as exc:
        assert exc.diagnostics, "a SpecError must say what is wrong"
        n = lines_of(data)
        for d in exc.diagnostics:
            if d.loc is None:  # only a problem of the whole file goes without a position
                assert (d.code, d.file) == ("file-empty", str(path)), d
                continue
            assert 1 <= d.loc.line <= n and d.loc.col >= 1, (d, n)
            assert d.path.startswith("$"), d
        return
    n = lines_of(data)
    assert all(1 <= loc.line <= n and loc.col >= 1 for loc in spec.locs.values())
    try:
        build_plan(spec)
    except SpecError as exc:
        n = lines_of(data)
        assert all(d.loc is not None and 1 <= d.loc.line <= n for d in exc.diagnostics)
    except PlanLimitError:
        pass


@SETTINGS
@given(data=mutated())
def test_mutated_specs_fail_only_with_located_spec_errors(folder: Path, data: bytes) -> None:
    check_loader(folder, data)


@SETTINGS
@given(data=generated())
def test_generated_yaml_fails_only_with_located_spec_errors(folder: Path, data: bytes) -> None:
    check_loader(folder, data)


@settings(SETTINGS, max_examples=40)
@given(data=st.one_of(mutated(), generated()), command=st.sampled_from(["validate", "plan"]))
def test_cli_exits_0_or_2_without_a_traceback(folder: Path, data: bytes, command: str) -> None:
    path = folder / "cli.yaml"
    path.write_bytes(data)
    code, out, err = run_cli([command, str(path)])
    assert code in (0, 2), (code, out, err)
    assert "Traceback" not in out + err
    if code == 2:
        assert out + err, "an invalid spec must be explained"


def test_every_seed_is_a_valid_spec_in_the_fuzz_folder(folder: Path) -> None:
    # Mutations must start from specs that load and plan, or the fuzzing proves little.
    for i, seed in enumerate(SEEDS):
        path = folder / f"seed{i}.yaml"
        path.write_bytes(seed)
        assert build_plan(load_spec(path)).tasks
