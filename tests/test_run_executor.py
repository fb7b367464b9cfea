"""Executor behaviour against a scriptable fake: retries, UUID rules, budget, resume, inputs."""

from __future__ import annotations

import hashlib
import sqlite3
from decimal import Decimal
from pathlib import Path

import pytest

from specrunner import runware
from specrunner.spec.types import Execution
from specrunner.executor import RunOutcome
from specrunner.store import open_store
from test_run_support import IMAGE, Fake, local_image, make_tasks, run_executor

KEY = "test-key-not-secret"


pytestmark = pytest.mark.usefixtures("no_waiting")


def run(tmp: Path, fake: Fake, tasks, *, max_usd: str = "1000", **ex) -> RunOutcome:
    execution = Execution(**{"max_attempts": 4, **ex})
    return run_executor(tmp, fake.transport(), tasks, execution, max_usd=max_usd, key=KEY)[0]


def states(tmp: Path) -> dict[str, str]:
    conn = sqlite3.connect(tmp / ".specrunner" / "run.db")
    try:
        return dict(conn.execute("SELECT task_key, state FROM tasks"))
    finally:
        conn.close()


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
    conn = sqlite3.connect(tmp_path / ".specrunner" / "run.db")
    rows = conn.execute("SELECT seed, cost, sha256, output_path FROM results").fetchall()
    assert len(rows) == 10
    assert {r[0] for r in rows} == {str(2**60), str(2**60 + 1)}  # exact beyond 2^53
    assert {r[2] for r in rows} == {hashlib.sha256(IMAGE).hexdigest()}
    assert conn.execute("SELECT sum(cost) FROM tasks").fetchone()[0] == pytest.approx(0.8)
    # every UUID was recorded before it was sent: the first transition out of planned
    assert conn.execute("SELECT count(*) FROM transitions WHERE to_state='sending'"
                        ).fetchone()[0] == 5


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
    conn = sqlite3.connect(tmp_path / ".specrunner" / "run.db")
    assert conn.execute("SELECT task_uuid, generation FROM tasks").fetchone() == (gen1, 1)
    assert {r[0] for r in conn.execute("SELECT task_uuid FROM task_uuids")} == {t0.task_uuid, gen1}


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


def test_budget_is_never_overshot_and_stops_dispatch(tmp_path: Path) -> None:
    fake = Fake()
    out = run(tmp_path, fake, make_tasks(20), max_usd="0.50", concurrency=8)
    assert out.status == "budget"
    assert len(fake.charges) == 6  # 6 x 0.08 = 0.48 <= 0.50 < 7 x 0.08
    assert out.counters.spent == Decimal("0.48")


def _unsent_back_to_planned(tmp: Path, sent: set[str]) -> dict[str, str]:
    """Every task whose UUID never reached the server is "planned" again after a clean stop
    (the send window records "sending" ahead of dispatch), and says why in its history."""
    conn = sqlite3.connect(tmp / ".specrunner" / "run.db")
    try:
        rows = conn.execute("SELECT task_key, task_uuid, state FROM tasks").fetchall()
        back = {k for (k,) in conn.execute(
            "SELECT task_key FROM transitions WHERE from_state='sending' AND to_state='planned' "
            "AND detail='not sent'")}
    finally:
        conn.close()
    unsent = {k for k, u, _ in rows if u not in sent}
    assert unsent and {k for k, _, state in rows if state == "planned"} == unsent
    assert back <= unsent and back  # the window had run ahead of the stop
    return {k: state for k, _, state in rows}


def test_budget_stop_leaves_unsent_tasks_planned_not_in_doubt(tmp_path: Path) -> None:
    fake = Fake()
    out = run(tmp_path, fake, make_tasks(200), max_usd="0.50", concurrency=8)
    assert out.status == "budget" and len(fake.charges) == 6
    found = _unsent_back_to_planned(tmp_path, {u for k, u in fake.log if k == "imageInference"})
    assert sorted(set(found.values())) == ["done", "planned"]


def test_stopping_error_leaves_unsent_tasks_planned(tmp_path: Path) -> None:
    fake = Fake(script=lambda kind, uuid, n: "auth" if len(fake.log) > 5 else None)
    out = run(tmp_path, fake, make_tasks(200), concurrency=4)
    assert out.status == "stopped"
    _unsent_back_to_planned(tmp_path, {u for k, u in fake.log if k == "imageInference"})


def test_a_run_gives_back_the_garbage_collector_settings_it_changed(tmp_path: Path) -> None:
    import gc

    before = gc.get_threshold(), gc.get_freeze_count()
    seen: list[tuple[int, ...]] = []
    fake = Fake(script=lambda kind, uuid, n: seen.append(gc.get_threshold()))
    out = run(tmp_path, fake, make_tasks(3))
    assert out.status == "complete"
    assert seen and all(t[0] >= 20_000 for t in seen)  # fewer young collections while running
    assert (gc.get_threshold(), gc.get_freeze_count()) == before


def test_a_freeze_made_by_the_program_itself_survives_a_run(tmp_path: Path) -> None:
    import gc

    kept = [object() for _ in range(3)]  # noqa: F841 (alive while frozen)
    gc.freeze()
    try:
        frozen = gc.get_freeze_count()
        assert run(tmp_path, Fake(), make_tasks(2)).status == "complete"
        # gc.unfreeze() would have emptied it (a few frozen objects may die meanwhile)
        assert gc.get_freeze_count() > frozen // 2 > 0
    finally:
        gc.unfreeze()


def test_runs_in_two_threads_restore_the_gc_settings_once_both_end(tmp_path: Path) -> None:
    import gc
    import threading

    before = gc.get_threshold(), gc.get_freeze_count()
    first_in = threading.Event()
    second_done = threading.Event()
    outcomes: dict[str, str] = {}

    def slow(kind: str, uuid: str, n: int) -> None:
        first_in.set()
        second_done.wait(10)  # the first run is still going when the second one ends

    def one(name: str, fake: Fake) -> None:
        outcomes[name] = run(tmp_path / name, fake, make_tasks(2, prompt=name)).status

    t = threading.Thread(target=one, args=("a", Fake(script=slow)))
    t.start()
    assert first_in.wait(10)
    one("b", Fake())
    during = gc.get_threshold()
    second_done.set()
    t.join(10)
    assert outcomes == {"a": "complete", "b": "complete"}
    assert during[0] >= 20_000  # b ended, a still running: a's setting stays
    assert (gc.get_threshold(), gc.get_freeze_count()) == before


def test_unknown_cost_counts_as_the_estimate(tmp_path: Path) -> None:
    fake = Fake(cost=None)
    out = run(tmp_path, fake, make_tasks(3), max_usd="0.20")
    assert out.status == "budget" and len(fake.charges) == 2


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
    store = open_store(tmp_path)
    run_id = store.begin_run({})
    store.plan_tasks(run_id, tasks)
    # simulate a crash after the send of task 0 landed (the server has it) and before task 1's
    store.conn.execute("UPDATE tasks SET state='sending'")
    store.close()
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
    conn = sqlite3.connect(tmp_path / ".specrunner" / "run.db")
    assert conn.execute("SELECT task_uuid, generation, state FROM tasks").fetchone() == (
        gen1, 1, "done")
    assert conn.execute("SELECT generation FROM task_uuids WHERE task_uuid=?", (gen1,)
                        ).fetchone() == (1,)


def test_attempts_record_every_request_of_a_task_including_polls_and_downloads(
        tmp_path: Path) -> None:
    fake = Fake(polls_before_ready=2, script=lambda kind, uuid, n:
                "truncated" if kind == "download" and n == 1 else None)
    tasks = make_tasks(3)
    out = run(tmp_path, fake, tasks)
    assert out.status == "complete"
    conn = sqlite3.connect(tmp_path / ".specrunner" / "run.db")
    try:
        rows = conn.execute("SELECT task_uuid, kind, outcome, started_at <= ended_at "
                            "FROM attempts").fetchall()
    finally:
        conn.close()
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


def test_every_send_finds_its_uuid_and_sending_state_already_durable(tmp_path: Path) -> None:
    """Read by another connection at the moment each imageInference request arrives (the
    send window records chunks of fresh tasks ahead of dispatch, one commit per chunk)."""
    db = tmp_path / ".specrunner" / "run.db"
    seen: list[tuple[str, str | None, str | None]] = []

    def check(kind: str, uuid: str, n: int) -> str | None:
        if kind == "imageInference":
            conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
            try:
                owner = conn.execute("SELECT task_key FROM task_uuids WHERE task_uuid=?",
                                     (uuid,)).fetchone()
                state = conn.execute("SELECT state FROM tasks WHERE task_uuid=?",
                                     (uuid,)).fetchone()
            finally:
                conn.close()
            seen.append((uuid, owner and owner[0], state and state[0]))
            if n == 1 and len(seen) % 7 == 0:
                return "provider"  # some fresh generations too, recorded by the send loop
        return None

    tasks = make_tasks(40)
    out = run(tmp_path, Fake(script=check), tasks, concurrency=8)
    assert out.status == "complete"
    keys = {t.task_key for t in tasks}
    assert len(seen) >= 40 and all(owner in keys and state == "sending"
                                   for _, owner, state in seen), seen
