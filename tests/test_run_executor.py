"""Executor behaviour against a scriptable fake: retries, UUID rules, budget, resume, inputs."""

from __future__ import annotations

import hashlib
from decimal import Decimal
from pathlib import Path

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_run_support import IMAGE, Fake, local_image, make_tasks, planned_record, run_executor

from specrunner import runware
from specrunner.record import read_attempts, read_snapshot, read_uuids
from specrunner.run.budget import _exact_sum
from specrunner.run.context import RunOutcome
from specrunner.spec.types import Execution

KEY = "test-key-not-secret"


pytestmark = pytest.mark.usefixtures("no_waiting")


def run(tmp: Path, fake: Fake, tasks, *, max_usd: str = "1000", **ex) -> RunOutcome:
    execution = Execution(**{"max_attempts": 4, **ex})
    return run_executor(tmp, fake.transport(), tasks, execution, max_usd=max_usd, key=KEY)[0]


def states(tmp: Path) -> dict[str, str]:
    return {r.task_key: r.state for r in read_snapshot(tmp).tasks}


def test_async_run_writes_every_image_and_records_results(tmp_path: Path) -> None:
    fake = Fake(polls_before_ready=2)
    tasks = make_tasks(5, numbers=2)
    out = run(tmp_path, fake, tasks)
    assert out.status == "complete" and out.counters.done == 5
    assert sorted(fake.charges) == sorted(t.task_uuid for t in tasks)
    assert set(fake.charges.values()) == {1} and fake.double_charge_attempts == 0
    for t in tasks:
        for rel in t.output_paths():
            assert (tmp_path / rel).read_bytes() == IMAGE
    snap = read_snapshot(tmp_path)
    rows = [r for rs in snap.results.values() for r in rs]
    assert len(rows) == 10
    assert {r.seed for r in rows} == {str(2**60), str(2**60 + 1)}  # exact beyond 2^53
    assert {r.sha256 for r in rows} == {hashlib.sha256(IMAGE).hexdigest()}
    assert sum(t.cost or 0 for t in snap.tasks) == Decimal("0.80")


def test_sync_delivery_and_base64_output(tmp_path: Path) -> None:
    fake = Fake()
    tasks = make_tasks(3, delivery="sync", output_type="base64Data")
    out = run(tmp_path, fake, tasks)
    assert out.status == "complete"
    assert [k for k, _ in fake.log] == ["imageInference"] * 3  # no polls, no downloads
    assert all((tmp_path / t.output_paths()[0]).read_bytes() == IMAGE for t in tasks)


@pytest.mark.parametrize("fault", ["drop", "garbage"])
def test_ambiguous_outcome_resends_same_uuid_and_fetches(tmp_path: Path, fault: str) -> None:
    fake = Fake(script=lambda kind, uuid, n: fault if kind == "imageInference" and n == 1 else None)
    tasks = make_tasks(4)
    out = run(tmp_path, fake, tasks)
    assert out.status == "complete"
    # the retry reused the UUID: the server refused to charge it again, the client fetched it
    assert fake.double_charge_attempts == 4
    assert set(fake.charges.values()) == {1} and len(fake.charges) == 4


@pytest.mark.parametrize("fault", ["http500", "http503", "http429", "connect", "ratecode"])
def test_transient_faults_are_retried_with_the_same_uuid(tmp_path: Path, fault: str) -> None:
    fake = Fake(script=lambda kind, uuid, n: fault if kind == "imageInference" and n <= 2 else None)
    tasks = make_tasks(3)
    out = run(tmp_path, fake, tasks)
    assert out.status == "complete" and out.counters.retries == 6
    sent = [u for k, u in fake.log if k == "imageInference"]
    assert sorted(sent) == sorted(t.task_uuid for t in tasks for _ in range(3))


def test_provider_failure_gets_a_fresh_recorded_uuid(tmp_path: Path) -> None:
    fake = Fake(script=lambda kind, uuid, n: "provider" if kind == "imageInference"
                and n == 1 and uuid.startswith(runware.task_uuid(t0.task_key)[:8]) else None)
    t0 = make_tasks(1)[0]
    out = run(tmp_path, fake, [t0])
    assert out.status == "complete"
    gen1 = runware.task_uuid(t0.task_key, 1)
    assert [u for k, u in fake.log if k == "imageInference"] == [t0.task_uuid, gen1]
    snap = read_snapshot(tmp_path)
    assert (snap.tasks[0].task_uuid, snap.tasks[0].generation) == (gen1, 1)
    assert set(read_uuids(tmp_path)) == {t0.task_uuid, gen1}


def test_validation_error_is_final_for_that_task_only(tmp_path: Path) -> None:
    tasks = make_tasks(3)
    bad = tasks[1].task_uuid
    fake = Fake(script=lambda kind, uuid, n: "validation" if uuid == bad else None)
    out = run(tmp_path, fake, tasks)
    assert out.status == "failed" and out.counters.done == 2 and out.counters.failed == 1
    assert [u for k, u in fake.log if k == "imageInference"].count(bad) == 1
    assert states(tmp_path)[tasks[1].task_key] == "failed"


@pytest.mark.parametrize("fault", ["auth", "quota"])
def test_auth_and_quota_stop_the_whole_run(tmp_path: Path, fault: str) -> None:
    fake = Fake(script=lambda kind, uuid, n: fault)
    out = run(tmp_path, fake, make_tasks(30), concurrency=2)
    assert out.status == "stopped"
    assert len([k for k, _ in fake.log if k == "imageInference"]) <= 2


def test_a_price_above_the_table_is_learned_before_the_budget_is_spent(tmp_path: Path) -> None:
    fake = Fake(cost=0.50, polls_before_ready=2)  # the table says 0.08; answers take polls
    out = run(tmp_path, fake, make_tasks(12), max_usd="1.00", concurrency=4)
    assert out.status == "budget"
    assert len(fake.charges) == 2  # 2 x 0.50 = 1.00: billed never past the cap
    assert out.counters.spent == Decimal("1.00") and out.counters.price == Decimal("0.50")
    assert out.counters.price_source == "reported"


def test_until_the_first_cost_is_known_one_task_is_in_flight(tmp_path: Path) -> None:
    fake = Fake(polls_before_ready=2)
    out = run(tmp_path, fake, make_tasks(6), concurrency=4)
    assert out.status == "complete"
    kinds = [k for k, _ in fake.log]
    answered = [i for i, k in enumerate(kinds) if k == "getResponse"][2]  # its results (cost)
    assert kinds[:answered + 1].count("imageInference") == 1  # nothing else before that
    assert kinds.count("imageInference") == 6


def test_budget_is_never_overshot_and_stops_dispatch(tmp_path: Path) -> None:
    fake = Fake(cost=0.16)  # twice the table's price: learned from the first answer
    out = run(tmp_path, fake, make_tasks(20), max_usd="2.00", concurrency=8)
    assert out.status == "budget"
    assert len(fake.charges) == 12  # 12 x 0.16 = 1.92 <= 2.00 < 13 x 0.16
    assert out.counters.spent == Decimal("1.92")


def test_tasks_that_do_not_fit_what_the_campaign_has_left_send_nothing(tmp_path: Path) -> None:
    run(tmp_path, Fake(), make_tasks(3), max_usd="0.30")  # 0.24 spent
    fake = Fake()
    out = run(tmp_path, fake, make_tasks(3, prompt="edited"), max_usd="0.30")
    assert out.status == "budget" and fake.log == []
    assert "spent $0.24 of its $0.30" in out.message and "need $0.24 more" in out.message
    assert "at least $0.48" in out.message
    more = run(tmp_path, Fake(), make_tasks(3, prompt="edited"), max_usd="0.48")
    assert more.status == "complete" and more.counters.campaign_spent == Decimal("0.48")


def _unsent_stay_planned(tmp: Path, sent: set[str]) -> dict[str, str]:
    """Every task whose UUID never reached the server is still "planned" after a clean stop:
    "sending" is recorded just before a task's request leaves, never ahead."""
    rows = read_snapshot(tmp).tasks
    unsent = {r.task_key for r in rows if r.task_uuid not in sent}
    assert unsent and {r.task_key for r in rows if r.state == "planned"} == unsent
    return {r.task_key: r.state for r in rows}


def test_budget_stop_leaves_unsent_tasks_planned_not_in_doubt(tmp_path: Path) -> None:
    fake = Fake(cost=0.16)
    out = run(tmp_path, fake, make_tasks(200), max_usd="16.00", concurrency=8)
    assert out.status == "budget" and len(fake.charges) == 100
    found = _unsent_stay_planned(tmp_path, {u for k, u in fake.log if k == "imageInference"})
    assert sorted(set(found.values())) == ["done", "planned"]


def test_stopping_error_leaves_unsent_tasks_planned(tmp_path: Path) -> None:
    fake = Fake(script=lambda kind, uuid, n: "auth" if len(fake.log) > 5 else None)
    out = run(tmp_path, fake, make_tasks(200), concurrency=4)
    assert out.status == "stopped"
    _unsent_stay_planned(tmp_path, {u for k, u in fake.log if k == "imageInference"})


def _children() -> list[str]:
    import os

    pids: list[str] = []
    for tid in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{tid}/children") as fh:
            pids += fh.read().split()
    return pids


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc")
def test_a_run_starts_no_child_process_and_leaves_the_garbage_collector_alone(
        tmp_path: Path) -> None:
    import gc

    before = (gc.isenabled(), gc.get_threshold(), gc.get_freeze_count())
    seen: list[tuple[object, ...]] = []
    fake = Fake(script=lambda kind, uuid, n: seen.append(
        (gc.isenabled(), gc.get_threshold(), gc.get_freeze_count(), tuple(_children()))))
    assert run(tmp_path, fake, make_tasks(5)).status == "complete"
    assert seen and set(seen) == {(*before, ())}


def test_unknown_cost_counts_as_the_table_price(tmp_path: Path) -> None:
    fake = Fake(cost=None)
    out = run(tmp_path, fake, make_tasks(3), max_usd="0.24")
    assert out.status == "complete" and len(fake.charges) == 3
    assert out.counters.spent == Decimal("0.24") and out.counters.price_source == "unreported"


def test_finished_campaign_makes_zero_calls_on_resume(tmp_path: Path) -> None:
    tasks = make_tasks(4)
    run(tmp_path, Fake(), tasks)
    again = Fake()
    out = run(tmp_path, again, tasks)
    assert out.status == "complete" and out.counters.skipped == 4 and again.log == []


def test_changed_prompt_reruns_only_changed_tasks(tmp_path: Path) -> None:
    run(tmp_path, Fake(), make_tasks(3))
    edited = make_tasks(3)
    edited[1] = make_tasks(3, prompt="new")[1]
    again = Fake()
    out = run(tmp_path, again, edited)
    assert out.counters.skipped == 2 and [u for k, u in again.log if k == "imageInference"] == [
        edited[1].task_uuid]


def test_in_doubt_task_is_reconciled_before_any_resend(tmp_path: Path) -> None:
    tasks = make_tasks(2)
    fake = Fake()
    record, run_id = planned_record(tmp_path, tasks)

    async def crash_after_sending() -> None:  # "sending" durable, then the process died
        log = record.run_log(run_id)
        async with anyio.create_task_group() as tg:
            tg.start_soon(log.serve)
            for t in tasks:
                log.sending(t.task_key, "planned", t.task_uuid, 0, 1)
            await log.close()

    try:
        anyio.run(crash_after_sending)
    finally:
        record.close()
    fake.charges[tasks[0].task_uuid] = 1
    fake.results[tasks[0].task_uuid] = fake._items(tasks[0].task_uuid, tasks[0].request)
    fake.polls[tasks[0].task_uuid] = 0
    out = run(tmp_path, fake, tasks)
    assert out.status == "complete" and fake.double_charge_attempts == 0
    first = {u: [k for k, uu in fake.log if uu == u] for u in (t.task_uuid for t in tasks)}
    assert first[tasks[0].task_uuid][0] == "getResponse"
    assert "imageInference" not in first[tasks[0].task_uuid]
    assert first[tasks[1].task_uuid][:3] == ["getResponse", "getTaskDetails", "imageInference"]


def test_truncated_download_is_retried_then_recorded(tmp_path: Path) -> None:
    fake = Fake(script=lambda kind, uuid, n: "truncated" if kind == "download" and n == 1 else None)
    tasks = make_tasks(2)
    out = run(tmp_path, fake, tasks)
    assert out.status == "complete"
    assert all((tmp_path / t.output_paths()[0]).read_bytes() == IMAGE for t in tasks)


def test_local_inputs_uploaded_once_per_content_and_mask_inverted(tmp_path: Path) -> None:
    seed = local_image(tmp_path, "seed.png", 10)
    mask = local_image(tmp_path, "mask.png", 0, invert=True)
    fake = Fake()
    out = run(tmp_path / "out", fake, make_tasks(6, local={"seedImage": seed, "maskImage": mask}))
    assert out.status == "complete"
    assert len(fake.uploads) == 2
    # every task referenced the uploaded UUIDs, never a local placeholder
    sent = [b for b in fake.bodies if b"imageInference" in b]
    assert len(sent) == 6 and not any(b"local:" in b for b in sent)
    # a second campaign in the same folder reuses the recorded uploads (within 30 days)
    fake2 = Fake()
    run(tmp_path / "out", fake2, make_tasks(2, local={"seedImage": seed, "maskImage": mask},
                                            prompt="other"))
    assert fake2.uploads == []


def test_inline_inputs_send_inverted_mask_as_data_uri(tmp_path: Path) -> None:
    import base64
    import io
    import json

    from PIL import Image

    mask = local_image(tmp_path, "mask.png", 0, invert=True)
    seed = local_image(tmp_path, "seed.png", 10)
    fake = Fake()
    run(tmp_path / "out", fake, make_tasks(2, local={"seedImage": seed, "maskImage": mask}),
        upload="inline")
    assert fake.uploads == []
    body = json.loads(fake.bodies[0])[0]
    uri = body["inputs"]["maskImage"]
    assert uri.startswith("data:image/png;base64,")
    px = Image.open(io.BytesIO(base64.b64decode(uri.partition(",")[2]))).getpixel((0, 0))
    assert px == 255  # black-edits mask inverted to Runware's white-edits convention
    assert body["inputs"]["seedImage"].startswith("data:image/png;base64,")


def test_api_key_only_in_authorization_header(tmp_path: Path) -> None:
    fake = Fake()
    run(tmp_path, fake, make_tasks(2))
    assert set(fake.auth_headers) == {f"Bearer {KEY}"}
    assert not any(KEY.encode() in b for b in fake.bodies)


def test_retry_of_a_failed_task_records_its_fresh_uuid_before_sending(tmp_path: Path) -> None:
    t0 = make_tasks(1)[0]
    run(tmp_path, Fake(script=lambda kind, uuid, n: "validation"), [t0])
    fake = Fake()
    out = run(tmp_path, fake, [t0])
    gen1 = runware.task_uuid(t0.task_key, 1)
    assert out.status == "complete" and [u for k, u in fake.log if k == "imageInference"] == [gen1]
    snap = read_snapshot(tmp_path)
    row = snap.tasks[0]
    assert (row.task_uuid, row.generation, row.state) == (gen1, 1, "done")
    assert read_uuids(tmp_path)[gen1] == t0.task_key and snap.new_uuids == 1


def test_attempts_record_every_request_of_a_task_including_polls_and_downloads(
        tmp_path: Path) -> None:
    fake = Fake(polls_before_ready=2, script=lambda kind, uuid, n:
                "truncated" if kind == "download" and n == 1 else None)
    tasks = make_tasks(3)
    out = run(tmp_path, fake, tasks)
    assert out.status == "complete"
    rows = [(a.task_uuid, a.kind, a.outcome, a.started_at <= a.ended_at)
            for a in read_attempts(tmp_path)]
    assert all(r[3] for r in rows)
    for t in tasks:
        mine = [(k, o) for u, k, o, _ in rows if u == t.task_uuid]
        sent = [k for k, u in fake.log if u == t.task_uuid]
        assert [k for k, _ in mine].count("send") == sent.count("imageInference") == 1
        assert [k for k, _ in mine].count("poll") == sent.count("getResponse") >= 1
        downloads = [o for k, o in mine if k == "download"]
        assert downloads[-1] == "ok" and len(downloads) >= 1
    # the one truncated download per task was recorded as a failed attempt, then the retry
    assert sorted(o for _, k, o, _ in rows if k == "download") == ["fault"] * 3 + ["ok"] * 3


def test_a_task_said_to_be_processing_is_not_asked_about_with_get_task_details(
        tmp_path: Path) -> None:
    # getTaskDetails is one POST per task; it is for an empty answer ("unknown" and "running"
    # look alike), not for one that says "processing".
    fake = Fake(polls_before_ready=20)
    tasks = make_tasks(3)
    assert run(tmp_path, fake, tasks).status == "complete"
    kinds = [k for k, _ in fake.log]
    assert kinds.count("getResponse") >= 3 * 21 and "getTaskDetails" not in kinds


def test_every_send_finds_its_uuid_already_durable(tmp_path: Path) -> None:
    """Read by another connection at the moment each imageInference request arrives."""
    seen: list[tuple[str, str | None, str | None]] = []

    def check(kind: str, uuid: str, n: int) -> str | None:
        if kind == "imageInference":
            snap = read_snapshot(tmp_path)  # another connection, at the moment it arrives
            state = next((r.state for r in snap.tasks if r.task_uuid == uuid), None)
            seen.append((uuid, read_uuids(tmp_path).get(uuid), state))
            if n == 1 and len(seen) % 7 == 0:
                return "provider"  # some fresh generations too, recorded by the send loop
        return None

    tasks = make_tasks(40)
    out = run(tmp_path, Fake(script=check), tasks, concurrency=8)
    assert out.status == "complete"
    keys = {t.task_key for t in tasks}
    assert len(seen) >= 40 and all(owner in keys for _, owner, _ in seen), seen


def one_by_one(terms: list[tuple[Decimal, int]]) -> Decimal:
    total = Decimal(0)
    for x, n in terms:
        for _ in range(n):
            total += x
    return total


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(st.decimals(allow_nan=False, allow_infinity=False, places=4,
                                      min_value=-10**6, max_value=10**6) |
                          st.decimals(allow_nan=False, allow_infinity=False),
                          st.integers(min_value=1, max_value=40)), max_size=6))
def test_the_campaign_spend_is_summed_as_task_by_task(terms) -> None:
    """A resume sums what earlier runs spent from per-cost counts (a record of 50,000 tasks
    holds a few distinct costs): the same Decimal, digit for digit, as adding each task's
    in record order, or None where the order could matter (then it adds them one by one)."""
    got = _exact_sum(terms)
    if got is not None:
        assert (got, str(got)) == (one_by_one(terms), str(one_by_one(terms)))


def test_the_campaign_spend_sum_gives_way_where_rounding_would_decide() -> None:
    assert str(_exact_sum([(Decimal("0.08"), 50_000), (Decimal("0.0800"), 3)])) == "4000.2400"
    assert _exact_sum([]) == 0
    third = Decimal(1) / Decimal(3)  # 28 digits: four of them need 29
    assert _exact_sum([(third, 4)]) is None
    assert _exact_sum([(Decimal("1E+30"), 1), (Decimal("1"), 1)]) is None
    assert _exact_sum([(Decimal("NaN"), 1)]) is None

