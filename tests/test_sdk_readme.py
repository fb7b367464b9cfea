"""The README's local-server section works as written: its shell commands (serve, run
--base-url, the ledger), its two SDK snippets, and its example fault file.

The only liberty taken: port 8765 becomes a free port, and `specrunner` runs as
`python -m specrunner` (the same entry point) so the test does not depend on PATH.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from test_sdk_conformance import loopback_only  # noqa: F401  (autouse: no lookups but loopback)

from specrunner.commands import serve
from specrunner.local import LocalConfig, create_app
from specrunner.local.faults import FaultConfig, Latency
from specrunner.local.server import running

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
SECTION = README[README.index("### Use the local server as your Runware backend"):
                 README.index("### Faults")]


def blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def clean_env() -> dict[str, str]:
    """The user's shell: no key, no base URL (the suite's canary key is not theirs)."""
    env = {k: v for k, v in os.environ.items() if k not in ("RUNWARE_API_KEY",
                                                              "RUNWARE_BASE_URL")}
    env["PYTHONPATH"] = str(ROOT)
    return env


def command(line: str, port: int) -> tuple[dict[str, str], list[str]]:
    """(environment assignments, argv) of one README shell line."""
    words = shlex.split(line.replace("8765", str(port)), comments=True)
    env = {}
    while words and re.match(r"^[A-Z_]+=", words[0]):
        name, _, value = words.pop(0).partition("=")
        env[name] = value
    if words[0] == "specrunner":
        words = [sys.executable, "-m", "specrunner", *words[1:]]
    return env, words


@pytest.mark.slow
def test_the_serve_run_and_stats_commands_work_as_written(tmp_path: Path) -> None:
    (sh,) = blocks(SECTION, "sh")
    lines = [line for line in sh.splitlines() if line.strip()]
    assert [line.split()[0] for line in lines] == ["specrunner", "RUNWARE_API_KEY=local",
                                                   "curl"]
    assert "--port 8765" in lines[0] and "--base-url http://127.0.0.1:8765/v1" in lines[1]
    shutil.copytree(ROOT / "specs" / "examples", tmp_path / "specs" / "examples")
    port = free_port()
    env, argv = command(lines[0], port)
    server = subprocess.Popen(argv, cwd=tmp_path, env={**clean_env(), **env},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        banner = server.stdout.readline() if server.stdout else ""
        assert f"on http://127.0.0.1:{port}" in banner and "any non-empty key" in banner
        env, argv = command(lines[1], port)
        run = subprocess.run(argv, cwd=tmp_path, env={**clean_env(), **env},
                             capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr
        assert re.search(r"^status\s+complete$", run.stdout, flags=re.M)
        assert (tmp_path / "out" / "served" / ".specrunner" / "run.db").is_file()
        env, argv = command(lines[2], port)
        if shutil.which("curl"):
            shown = subprocess.run(argv, env={**clean_env(), **env}, capture_output=True,
                                   text=True, timeout=30).stdout
        else:  # the same request
            shown = httpx.get(argv[-1], headers={"Authorization": "Bearer local"}).text
        stats = json.loads(shown)
        assert stats["tasksCharged"] == 12 and stats["totalBilledUSD"] == pytest.approx(0.96)
        assert stats["duplicateAttemptsTotal"] == 0
    finally:
        server.terminate()
        server.communicate(timeout=15)


def test_the_sdk_snippets_run_against_the_server(monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    snippets = blocks(SECTION, "python")
    assert len(snippets) == 2
    assert 'ws_base_url="ws://127.0.0.1:8765/v1"' in snippets[0]
    assert 'transport="rest"' in snippets[1]
    assert 'http_base_url="http://127.0.0.1:8765/v1"' in snippets[1]
    server = create_app(LocalConfig())  # what `specrunner serve` runs without a key
    monkeypatch.chdir(ROOT)  # the snippet reads specs/examples/images/...
    with running(server) as url:
        port = url.rsplit(":", 1)[1]
        printed: list[Any] = []
        for snippet in snippets:
            code = compile(snippet.replace("8765", port), "README.md", "exec")
            exec(code, {"__name__": "__main__"})
            printed.append(capsys.readouterr().out.strip())
        ws_urls = eval(printed[0])  # the first snippet prints a list of URLs
        assert len(ws_urls) == 2 and printed[1].startswith(url + "/image/")
        for image_url in [*ws_urls, printed[1]]:
            r = httpx.get(image_url)
            assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    stats = server.stats()
    assert sorted(stats.charges.values()) == [Decimal("0.08"), Decimal("0.16")]
    assert stats.total_billed_usd == Decimal("0.24") and stats.images_billed == 3
    assert stats.requests_by_type["imageUpload"] == 2 and stats.websocket_connections == 1
    assert stats.http_requests >= 1 + 3  # the REST snippet's POST, the three downloads


def test_the_fault_file_example_is_the_documented_one() -> None:
    faults = README[README.index("### Faults"):README.index("### State across restarts")]
    example = ROOT / "docs" / "examples" / "faults.yaml"
    assert blocks(faults, "yaml") == [example.read_text(encoding="utf-8")]
    config = FaultConfig.load(example)
    assert (config.seed, config.capacity, config.hang_s) == (7, 32, 30.0)
    assert config.latency == Latency("uniform", 0.05, 0.3)
    assert config.processing == Latency("exponential", 2.0, 10.0)
    assert dict(config.rates) == {"http_503": 0.05, "drop": 0.02, "content_policy": 0.1}
    from specrunner import cli

    parser, _ = cli.build_parser()
    args = parser.parse_args(["serve", "--faults", str(example), "--fault", "drop=0.1"])
    assert dict(serve.build_config(args, {}).faults.rates)["drop"] == 0.1
