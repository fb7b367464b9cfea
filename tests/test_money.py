"""Money when the provider's answers differ from the plan, judged by the local server's own
ledger (what it billed), never by the runner's counters.

Each scenario is one a real provider can produce: a price above the table (or a `prices:`
override below the real one), more images than asked, a task billed and then answered with
an error, no cost reported at all, an edit that tries to spend the budget twice.
"""

from __future__ import annotations

import io
from decimal import Decimal
from pathlib import Path

import pytest
from test_run_cli import write_spec
from test_run_support import audit

from specrunner import cli
from specrunner.errors import UsageError
from specrunner.local import FaultConfig, Latency, LocalConfig, create_app
from specrunner.plan import build_plan
from specrunner.record import read_snapshot
from specrunner.run import Runner, check_base_url
from specrunner.spec import load_spec

pytestmark = pytest.mark.usefixtures("no_waiting")


def campaign(tmp: Path, repeat: int = 6, max_usd: str = "1.00", extra: str = "") -> Path:
    """12 tasks (2 styles x repeat 6) of one image each, table price $0.08, concurrency 4."""
    spec = write_spec(tmp, repeat=repeat)
    text = spec.read_text().replace("budget: {max_usd: 5}", f"budget: {{max_usd: {max_usd}}}")
    spec.write_text(text.replace("execution: {", "execution: {concurrency: 4, ") + extra)
    return spec


def run(spec: Path, out: Path, server, **kw):
    return Runner(build_plan(load_spec(spec)), out_dir=out, local=server, **kw).run_sync()


def server(**faults) -> object:
    return create_app(LocalConfig(render=False, faults=FaultConfig(**faults)))


def billed(app) -> Decimal:
    return app.stats().total_billed_usd


def test_a_price_above_the_table_never_bills_past_the_budget(tmp_path: Path) -> None:
    app = server(price_usd=Decimal("0.50"), processing=Latency("fixed", 0.05))
    result = run(campaign(tmp_path), tmp_path / "o", app)
    assert billed(app) <= Decimal("1.00") and billed(app) == Decimal("1.00")
    assert result.status == "budget" and result.exit_code == 3
    assert result.counters.price == Decimal("0.50")
    a = audit(dict(app.ledger.images), tmp_path / "o")
    assert a.billed_twice == 0 and a.lost == 0
    report = io.StringIO()
    assert cli.run(["report", str(tmp_path / "o")], report, io.StringIO()) == 0
    assert "$0.50 as the provider billed it (table $0.08)" in report.getvalue()


def test_a_prices_override_below_the_real_price_is_corrected_by_the_first_answer(
        tmp_path: Path) -> None:
    app = server()  # bills the real $0.08
    spec = campaign(tmp_path, max_usd="0.50", extra='prices: {"ideogram:3@3": 0.01}\n')
    result = run(spec, tmp_path / "o", app)
    assert billed(app) <= Decimal("0.50")
    assert len(app.stats().charges) == 6  # 6 x 0.08 = 0.48
    assert result.status == "budget" and result.counters.price == Decimal("0.08")


def test_more_images_than_asked_are_all_kept_counted_and_within_budget(tmp_path: Path) -> None:
    app = server(extra_images=2)  # 3 images, billed, for numberResults 1
    result = run(campaign(tmp_path), tmp_path / "o", app)
    stats = app.stats()
    assert billed(app) <= Decimal("1.00") and stats.images_billed == 12  # 4 tasks x 3
    assert result.status == "budget"
    snap = read_snapshot(tmp_path / "o")
    kept = [r for rs in snap.results.values() for r in rs if r.output_path]
    assert len(kept) == stats.images_billed  # every billed image recorded and on disk
    assert all((tmp_path / "o" / r.output_path).is_file() for r in kept)
    assert audit(dict(app.ledger.images), tmp_path / "o").lost == 0
    report = io.StringIO()
    cli.run(["report", str(tmp_path / "o")], report, io.StringIO())
    assert "returned 8 image(s) beyond numberResults" in report.getvalue()


def test_a_task_billed_then_answered_with_an_error_is_fetched_never_paid_again(
        tmp_path: Path) -> None:
    app = server(rates={"billed_then_error": 0.4}, seed=3)
    spec = campaign(tmp_path, max_usd="5")
    for _ in range(3):  # resume until complete (bounded)
        result = run(spec, tmp_path / "o", app)
        if result.status == "complete":
            break
    stats = app.stats()
    assert stats.faults_injected["billed_then_error"] >= 2
    assert result.status == "complete"
    assert len(stats.charges) == 12  # one UUID billed per task: none paid twice
    a = audit(dict(app.ledger.images), tmp_path / "o")
    assert (a.billed_twice, a.lost, a.unknown_charges, a.done) == (0, 0, 0, 12)


def test_a_failure_that_may_follow_billing_is_asked_about_on_resume(tmp_path: Path) -> None:
    """An earlier run's send landed and was billed, but the task was recorded failed with an
    error that may come after billing (internalError), and no results. The resume asks about
    the old UUID and fetches the results: nothing is paid twice, no new UUID is minted."""
    import anyio
    import httpx
    from test_run_support import force_states, planned_record

    from specrunner.run.inputs import substitute

    app = server()
    spec = campaign(tmp_path, repeat=1, max_usd="5")
    spec.write_text(spec.read_text().replace("execution: {", "execution: {upload: inline, "))
    plan = build_plan(load_spec(spec))
    record, _ = planned_record(tmp_path / "o", list(plan.tasks))
    record.close()

    async def earlier_sends() -> None:  # what reached the server before the record said so
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app)) as http:
            for t in plan.tasks:
                from specrunner.run.client import data_uri

                inputs = {n: data_uri(img.path.read_bytes() if not img.invert else
                                      _inverted(img.path), "PNG")
                          for n, img in t.local_inputs.items()}
                body = [{**substitute(t, t.task_uuid, inputs), "deliveryMethod": "sync"}]
                r = await http.post("http://local.test/v1", json=body,
                                    headers={"Authorization": "Bearer k"})
                assert r.status_code == 200, r.text

    anyio.run(earlier_sends)
    assert len(app.stats().charges) == 2
    force_states(tmp_path / "o", {t.variant_id: ("failed", "internalError") for t in plan.tasks})
    result = run(spec, tmp_path / "o", app)
    assert result.status == "complete" and len(app.stats().charges) == 2
    assert read_snapshot(tmp_path / "o").new_uuids == 0


def _inverted(path: Path) -> bytes:
    from PIL import Image, ImageOps

    buf = io.BytesIO()
    ImageOps.invert(Image.open(path).convert("L")).save(buf, "PNG")
    return buf.getvalue()


def test_the_budget_caps_the_campaign_across_runs(tmp_path: Path) -> None:
    app = server()
    spec = campaign(tmp_path, max_usd="1.00")  # 12 x 0.08 = 0.96
    assert run(spec, tmp_path / "o", app).status == "complete"
    spec.write_text(spec.read_text().replace("A sign reading", "A new sign reading"))
    result = run(spec, tmp_path / "o", app)
    assert result.status == "budget" and result.exit_code == 3
    assert billed(app) == Decimal("0.96")  # the edit sent nothing
    assert "spent $0.96 of its $1.00" in result.message and "need $0.96 more" in result.message
    raised = run(spec, tmp_path / "o", app, max_usd=Decimal("1.92"))
    assert raised.status == "complete" and billed(app) == Decimal("1.92")
    report = io.StringIO()
    cli.run(["report", str(tmp_path / "o"), "--format", "json"], report, io.StringIO())
    import json

    doc = json.loads(report.getvalue())
    assert doc["totals"]["campaign_usd"] == "1.92" and doc["totals"]["actual_usd"] == "0.96"
    assert [r["spent_usd"] for r in doc["runs"]] == ["0.96", "0.00", "0.96"]


def test_an_unreported_cost_is_unknown_never_zero(tmp_path: Path) -> None:
    app = server(report_cost=False)
    result = run(campaign(tmp_path, repeat=2, max_usd="5"), tmp_path / "o", app)
    assert result.status == "complete" and result.counters.price_source == "unreported"
    report = io.StringIO()
    cli.run(["report", str(tmp_path / "o")], report, io.StringIO())
    text = report.getvalue()
    assert "actual spend                     unknown (estimate $0.32)" in text
    assert "spend per image                  unknown" in text and "$0.00" not in text
    assert "(table price: the provider reported no cost)" in text


def test_tasks_in_doubt_and_none_failed_exit_4_incomplete(tmp_path: Path) -> None:
    app = server(rates={"hang": 1.0}, hang_s=30, latency=Latency("fixed", 0))
    spec = campaign(tmp_path, repeat=1, max_usd="5")
    spec.write_text(spec.read_text().replace(
        "execution: {", "execution: {request_timeout_s: 0.2, max_attempts: 1, upload: inline, "))
    code = cli.run(["run", str(spec), "--out", str(tmp_path / "o"), "--progress", "none",
                    "--base-url", "http://127.0.0.1:9/v1"], io.StringIO(), io.StringIO())
    assert code == 1  # nothing reachable: connect errors are not billed: failed
    result = run(spec, tmp_path / "o2", app)
    assert (result.status, result.exit_code) == ("incomplete", 4)
    assert result.counters.in_doubt == 2 and result.counters.failed == 0


@pytest.mark.parametrize("url", ["http://api.example.com/v1", "https://user:pw@api.example.com/v1",
                                 "ftp://api.example.com/v1", "https:///v1"])
def test_a_base_url_the_key_could_leak_to_is_refused_before_anything(tmp_path, url) -> None:
    with pytest.raises(UsageError):
        check_base_url(url)
    err = io.StringIO()
    code = cli.run(["run", str(campaign(tmp_path)), "--base-url", url, "--out",
                    str(tmp_path / "o"), "--progress", "none"], io.StringIO(), err)
    assert code == 2 and not (tmp_path / "o").exists() and "base URL" in err.getvalue()


@pytest.mark.parametrize("url", ["http://127.0.0.1:8765/v1", "http://localhost/v1",
                                 "http://[::1]:1/v1", "https://api.runware.ai/v1"])
def test_https_and_loopback_base_urls_are_accepted(url: str) -> None:
    assert check_base_url(url) == url


def test_run_refuses_a_spec_holding_the_key_before_any_request(tmp_path, monkeypatch) -> None:
    key = "rw-spec-key-0123456789abcdef"
    monkeypatch.setenv("RUNWARE_API_KEY", key)
    spec = campaign(tmp_path)
    spec.write_text(spec.read_text().replace("vars: {word: HELLO}", f"vars: {{word: {key}}}"))
    app = server()
    monkeypatch.setattr("specrunner.run.local_server", lambda faults, state_dir=None: app)
    err = io.StringIO()
    code = cli.run(["run", str(spec), "--local", "--out", str(tmp_path / "o"), "--progress",
                    "none"], io.StringIO(), err)
    assert code == 2 and app.stats().http_requests == 0 and key not in err.getvalue()
    assert not (tmp_path / "o").exists()

