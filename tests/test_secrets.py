"""The canary key (tests/conftest.py) must appear in no byte written or printed by a run,
including a run full of faults, a failed run, and an auth failure."""

from __future__ import annotations

import io
import json
import logging
import os
from pathlib import Path

import pytest
from conftest import CANARY_KEY
from test_run_cli import write_spec

import specrunner.run
from specrunner import cli
from specrunner.local import FaultConfig, LocalConfig, create_app
from specrunner.run import set_testing


def every_byte(folder: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file())


@pytest.mark.parametrize("server_key", [None, "the-real-key-differs"])
def test_canary_key_appears_nowhere(tmp_path, monkeypatch, caplog, capfd, server_key) -> None:
    assert os.environ["RUNWARE_API_KEY"] == CANARY_KEY
    set_testing(True)
    faults = FaultConfig(seed=5, rates={"drop": 0.1, "non_json": 0.1, "http_500": 0.1,
                                        "truncated_body": 0.1, "provider_timeout": 0.1,
                                        "billed_then_error": 0.5},
                         echo_key=True)  # every error message quotes the Authorization header
    app = create_app(LocalConfig(api_key=server_key, render=False, faults=faults))
    monkeypatch.setattr(specrunner.run, "local_server", lambda f, state_dir=None: app)
    caplog.set_level(logging.DEBUG)
    spec = write_spec(tmp_path)
    out, err = io.StringIO(), io.StringIO()
    codes = []
    try:
        # --local normally needs no key; the env key is still sent and must stay secret.
        # With 50% faults a task may end in doubt (3 ambiguous sends): resuming, bounded,
        # also runs the reconciliation paths past the canary.
        for _ in range(4):
            codes.append(cli.run(["run", str(spec), "--local", "--out", str(tmp_path / "o"),
                                  "--progress", "plain", "--progress-every", "0"], out, err))
            if codes[-1] not in (1, 4) or server_key is not None:
                break
    finally:
        set_testing(False)
    assert codes[-1] == (0 if server_key is None else 1), err.getvalue()
    if server_key:
        assert "invalidApiKey" in err.getvalue() or "unauthorized" in err.getvalue().lower()
    captured = capfd.readouterr()
    text = out.getvalue() + err.getvalue() + captured.out + captured.err + caplog.text
    assert CANARY_KEY not in text
    blob = every_byte(tmp_path)
    assert CANARY_KEY.encode() not in blob
    # the record is the biggest haystack: make sure it was searched, and that it holds the
    # server's echoed messages (redacted), so the redaction is what kept the key out
    assert (tmp_path / "o" / ".specrunner" / "run.db").stat().st_size > 0
    assert app.stats().http_requests > 0
    if server_key is None:
        assert app.stats().faults_injected["billed_then_error"] > 0
        assert b"request had Authorization: Bearer [redacted]" in blob
    report = io.StringIO()
    assert cli.run(["report", str(tmp_path / "o"), "--format", "json"], report, err) == 0
    assert CANARY_KEY not in report.getvalue()


def test_key_file_key_is_not_echoed_in_errors(tmp_path) -> None:
    spec = write_spec(tmp_path)
    keyfile = tmp_path / "key"
    keyfile.write_text(CANARY_KEY + "\n")
    out, err = io.StringIO(), io.StringIO()
    set_testing(True)
    try:  # an unreachable loopback port: the connect error must not carry the key
        code = cli.run(["run", str(spec), "--key-file", str(keyfile), "--base-url",
                        "http://127.0.0.1:9/v1", "--out", str(tmp_path / "o"),
                        "--progress", "none"], out, err)
    finally:
        set_testing(False)
    assert code == 1
    assert CANARY_KEY not in out.getvalue() + err.getvalue()
    assert CANARY_KEY.encode() not in every_byte(tmp_path / "o")
    assert json.dumps(CANARY_KEY)[1:-1] not in err.getvalue()
