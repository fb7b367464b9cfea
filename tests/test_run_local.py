"""End to end against the project's local server (in-process): its ledger is the oracle."""

from __future__ import annotations

import time
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from test_run_support import audit, local_image, make_tasks, run_executor

from specrunner.local import FaultConfig, LocalConfig, create_app
from specrunner.record import read_attempts, read_snapshot
from specrunner.run.context import RunOutcome
from specrunner.spec.types import Execution

EVERY_FAULT = {  # 20% of requests, plus task and download faults
    "http_429": 0.025, "http_500": 0.025, "http_502": 0.02, "http_503": 0.025,
    "http_504": 0.02, "drop": 0.03, "hang": 0.005, "non_json": 0.025, "truncated_body": 0.025,
    "provider_timeout": 0.05, "content_policy": 0.05,
    "truncated_image": 0.05, "oversized_image": 0.05,
}


pytestmark = pytest.mark.usefixtures("no_waiting")


def run_local(server, out: Path, tasks, *, max_usd: str = "10000", **ex) -> RunOutcome:
    execution = Execution(**{"request_timeout_s": 5.0, **ex})
    return run_executor(out, httpx.ASGITransport(app=server), tasks, execution,
                        max_usd=max_usd, url="http://local.test/v1", seed=7)[0]


@pytest.mark.parametrize("delivery", ["async", "sync"])
def test_clean_run_bills_each_task_once_and_keeps_every_image(tmp_path: Path, delivery) -> None:
    server = create_app(LocalConfig(render=False))
    tasks = make_tasks(40, numbers=2, delivery=delivery)
    out = run_local(server, tmp_path, tasks, concurrency=8)
    assert out.status == "complete"
    a = audit(dict(server.ledger.images), tmp_path)
    assert a == type(a)(40, 0, 0, 0, 40)
    assert server.stats().total_billed_usd == Decimal("6.40") == out.counters.spent


def test_every_fault_kind_zero_lost_zero_billed_twice(tmp_path: Path) -> None:
    faults = FaultConfig(seed=3, rates=EVERY_FAULT, hang_s=2.0, oversize_bytes=300_000)
    server = create_app(LocalConfig(render=False, faults=faults))
    n = 300
    tasks = make_tasks(n, numbers=2)
    runs = []
    for _ in range(4):  # resume until complete, bounded
        runs.append(run_local(server, tmp_path, tasks, concurrency=16, max_attempts=3,
                              request_timeout_s=0.5, max_download_bytes=200_000,
                              retry_budget_ratio=0.5))
        if runs[-1].status == "complete":
            break
    stats = server.stats()
    a = audit(dict(server.ledger.images), tmp_path)
    assert runs[-1].status == "complete", runs[-1]
    assert a.billed_twice == 0 and a.unknown_charges == 0 and a.lost == 0 and a.done == n
    assert set(stats.faults_injected) >= {"http_503", "drop", "non_json", "provider_timeout",
                                          "content_policy", "truncated_image", "oversized_image"}
    # retries within the bound: per task at most max_attempts sends per generation, and the
    # run-wide retry budget (ratio x first sends + floor) per run
    first = runs[0].counters
    assert first.retries <= 0.5 * first.sends + 10
    sends = stats.requests_by_type["imageInference"]
    generations = n + stats.faults_injected.get("provider_timeout", 0)
    assert sends <= 3 * generations * len(runs)
    assert stats.duplicate_attempts_total > 0  # ambiguous faults did re-send the same UUIDs


def test_uploads_go_once_per_content_to_the_local_server(tmp_path: Path) -> None:
    server = create_app(LocalConfig(render=True))
    seed = local_image(tmp_path, "seed.png", 90)
    mask = local_image(tmp_path, "mask.png", 0, invert=True)
    tasks = make_tasks(5, local={"seedImage": seed, "maskImage": mask})
    out = run_local(server, tmp_path / "out", tasks)
    assert out.status == "complete"
    assert server.stats().requests_by_type["imageUpload"] == 2
    assert audit(dict(server.ledger.images), tmp_path / "out").lost == 0


@pytest.mark.parametrize("request_timeout,task_deadline,state,code", [
    (0.2, 60.0, "in_doubt", "attemptsExhausted"),  # each send times out, then no sends left
    (30.0, 0.3, "in_doubt", "deadline"),  # the task's deadline ends its one hung send
])
def test_hung_requests_end_at_their_timeout_and_tasks_at_their_deadline(
        tmp_path: Path, request_timeout: float, task_deadline: float, state: str,
        code: str) -> None:
    server = create_app(LocalConfig(render=False, faults=FaultConfig(
        seed=1, rates={"hang": 1.0}, hang_s=600.0)))
    tasks = make_tasks(4, delivery="sync")
    t0 = time.monotonic()
    outcome, _ex = run_executor(tmp_path, httpx.ASGITransport(app=server), tasks,
                                Execution(request_timeout_s=request_timeout,
                                          task_deadline_s=task_deadline, max_attempts=2,
                                          concurrency=4),
                                url="http://local.test/v1")
    took = time.monotonic() - t0
    assert took < 10  # not the 600 s the server holds each answer
    assert outcome.status == "incomplete" and outcome.counters.in_doubt == 4
    rows = [(t.state, t.error_code) for t in read_snapshot(tmp_path).tasks]
    timeouts = sum(a.error_code == "requestTimeout" for a in read_attempts(tmp_path))
    assert rows == [(state, code)] * 4
    # 2 sends per task, then (the sends may have landed) one getResponse and one
    # getTaskDetails before the task is left in doubt: all hung, all cut at their timeout
    assert timeouts == (16 if code == "attemptsExhausted" else 0)
