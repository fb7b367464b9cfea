"""`specrunner merge`: shard folders joined into one folder with one record and every image,
checked against the local server's ledger (each task billed once), the files on disk (sha256),
and the record (every run, UUID, attempt, transition, result and upload kept); idempotent;
folders of different campaigns refused; duplicates, missing images, tasks in doubt."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import sqlite3
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio
import pytest
from test_run_cli import server, write_spec  # noqa: F401 (server: a fixture)
from test_run_support import IMAGE, audit

from specrunner import cli
from specrunner.plan import build_plan
from specrunner.record import RunMeta, open_record, read_snapshot, read_uuids, record_path
from specrunner.spec import load_spec

TABLES = ("runs", "tasks", "task_uuids", "transitions", "attempts", "results", "uploads")


def cli_call(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = cli.run([str(a) for a in argv], out, err)
    return code, out.getvalue(), err.getvalue()


def run(spec: Path, out: Path, shard: str | None = None) -> None:
    code, _text, err = cli_call("run", spec, "--local", "--out", out, "--progress", "none",
                                *(["--shard", shard] if shard else []))
    assert code == 0, err


def dump(folder: Path) -> dict[str, list[tuple[Any, ...]]]:
    conn = sqlite3.connect(f"{record_path(folder).resolve().as_uri()}?mode=ro", uri=True)
    try:
        return {t: list(conn.execute(f"SELECT * FROM {t}")) for t in TABLES}
    finally:
        conn.close()


def billed(server) -> dict[str, int]:
    """The ledger: taskUUID -> images billed."""
    return {u: int(c / Decimal("0.08")) for u, c in server.stats().charges.items()}


@pytest.fixture()
def shards(tmp_path: Path, server) -> tuple[Path, list[Path]]:
    """A 30-task campaign run as 3 shards, each in its own folder."""
    spec = write_spec(tmp_path, repeat=15)
    folders = [tmp_path / f"shard-{k}" for k in (1, 2, 3)]
    for k, folder in enumerate(folders, 1):
        run(spec, folder, f"{k}/3")
    return spec, folders


def test_three_shards_merge_into_one_complete_folder(tmp_path: Path, server, shards) -> None:
    _spec, folders = shards
    merged = tmp_path / "merged"
    code, out, err = cli_call("merge", *folders, "--out", merged)
    assert code == 0 and err == ""
    images = sum(len(read_snapshot(f).tasks) for f in folders)
    size = sum(p.stat().st_size for f in folders for p in f.iterdir() if p.is_file())
    assert out.splitlines() == [
        (f"merged 3 folder(s) into {merged.resolve()}: 3 run(s), 30 task(s) added, 0 replaced "
         f"by a copy further along, {images} image(s) copied ({size:,} bytes)"),
        "shards: 1/3, 2/3, 3/3",
        "plan: 30 of 30 tasks recorded, 30 done",
        "duplicates: none",
        f"report: specrunner report {merged.resolve()}"]

    # the ledger: every task billed once, every charge a done task of the merged record whose
    # images are on disk with the recorded sha256
    a = audit(billed(server), merged)
    assert (a.charged_tasks, a.done, a.billed_twice, a.unknown_charges, a.lost) == (30, 30, 0,
                                                                                   0, 0)
    # the report reads the merged folder as one campaign: every task done, every image there
    code, text, _ = cli_call("report", merged, "--format", "json")
    doc = json.loads(text)
    assert code == 0 and doc["totals"]["tasks"] == 30 and doc["totals"]["succeeded"] == 30
    assert doc["run"]["runs"] == 3
    for t in doc["tasks"]:
        assert t["status"] == "done" and len(t["images"]) == 1
        for img in t["images"]:
            assert hashlib.sha256((merged / img["path"]).read_bytes()).hexdigest() \
                == img["sha256"]
    assert cli_call("report", merged, "--format", "markdown")[0] == 0
    code, text, _ = cli_call("diff", folders[0], merged)
    n1 = len(read_snapshot(folders[0]).tasks)
    assert code == 0 and text.splitlines()[0].endswith(
        f"{30 - n1} added, 0 removed, 0 changed, {n1} unchanged")

    # the record keeps everything each folder recorded, run ids remapped
    got = dump(merged)
    parts = [dump(f) for f in folders]
    for table in ("task_uuids", "transitions", "attempts", "results", "tasks"):
        assert len(got[table]) == sum(len(p[table]) for p in parts), table
    assert {r[0] for r in got["task_uuids"]} == {r[0] for p in parts for r in p["task_uuids"]}
    snap = read_snapshot(merged)
    assert [r.run_id for r in snap.runs] == [1, 2, 3]
    assert sorted(r.shard for r in snap.runs) == ["1/3", "2/3", "3/3"]
    runs = {r.run_id: r.shard for r in snap.runs}
    for k, f in enumerate(folders, 1):  # each attempt kept under its own run, renumbered
        keys = {r.task_key for r in read_snapshot(f).tasks}
        assert {runs[a[2]] for a in got["attempts"] if a[1] in keys} == {f"{k}/3"}
    assert len(got["uploads"]) == 2  # seed and mask: one row each, the newest upload kept
    newest = max((p["uploads"] for p in parts), key=lambda u: u[0][3])
    assert sorted(got["uploads"]) == sorted(newest)


def test_merging_again_changes_nothing(tmp_path: Path, server, shards) -> None:
    _spec, folders = shards
    merged = tmp_path / "merged"
    assert cli_call("merge", *folders, "--out", merged)[0] == 0
    before = dump(merged)
    files = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in merged.rglob("*.png")}
    for sources in (folders, [merged, *folders], [folders[1], merged]):
        code, out, _err = cli_call("merge", *sources, "--out", merged)
        assert code == 0 and out.splitlines()[0] == (
            f"nothing new: {merged.resolve()} already holds everything in these "
            f"{len([s for s in sources if s != merged])} folder(s)")
        assert "duplicates: none" in out
        assert dump(merged) == before
        assert {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in merged.rglob("*.png")} \
            == files
    # a merge of merges holds the same: the runs are recognised, not copied twice
    again = tmp_path / "again"
    assert cli_call("merge", merged, *folders, "--out", again)[0] == 0
    assert dump(again)["runs"] == before["runs"] and len(dump(again)["attempts"]) == len(
        before["attempts"])


def test_running_the_spec_in_the_merged_folder_sends_nothing(tmp_path: Path, server,
                                                             shards) -> None:
    spec, folders = shards
    merged = tmp_path / "merged"
    assert cli_call("merge", *folders, "--out", merged)[0] == 0
    before = server.stats().http_requests
    code, out, _ = cli_call("plan", spec, "--out", merged)
    assert code == 0 and "30 done, 0 would run (est. $0.00)" in out
    run(spec, merged)
    assert server.stats().http_requests == before
    assert [r.shard for r in read_snapshot(merged).runs] == ["1/3", "2/3", "3/3", None]
    # the merged folder is a whole-plan folder now: a shard is refused there
    code, _, err = cli_call("run", spec, "--local", "--out", merged, "--shard", "1/3")
    assert code == 2 and ("holds shard 2/3, shard 3/3, the whole plan (runs without --shard); "
                          "this run is shard 1/3") in err


def test_a_missing_shard_is_named_and_running_the_spec_there_completes_it(
        tmp_path: Path, server, shards) -> None:
    spec, folders = shards
    merged = tmp_path / "merged"
    code, out, err = cli_call("merge", folders[0], folders[2], "--out", merged)
    n = len(read_snapshot(folders[0]).tasks) + len(read_snapshot(folders[2]).tasks)
    assert code == 0 and f"plan: {n} of 30 tasks recorded, {n} done" in out
    assert err == (f"warning: no folder ran shard 2/3: its tasks are not in the merged record; "
                   f"run the shard and merge again, or run them there with `specrunner run "
                   f"{spec.resolve()} --out {merged.resolve()}`\n")
    charges = len(server.stats().charges)
    run(spec, merged)  # the whole spec: only shard 2's tasks are unknown there
    assert len(server.stats().charges) == charges  # shard 2 ran already: answered, not billed
    a = audit(billed(server), merged)
    assert (a.done, a.billed_twice, a.lost, a.unknown_charges) == (30, 0, 0, 0)


def test_folders_of_different_campaigns_are_refused_untouched(tmp_path: Path, server,
                                                              shards) -> None:
    spec, folders = shards
    other_dir = tmp_path / "other"
    other_dir.mkdir()
    other = write_spec(other_dir, repeat=15, word="WORLD")  # every prompt differs
    run(other, tmp_path / "o1", "1/3")
    merged = tmp_path / "merged"
    code, out, err = cli_call("merge", folders[0], tmp_path / "o1", "--out", merged)
    assert code == 2 and out == ""
    assert err == (f"error: {folders[0].resolve()} and {(tmp_path / 'o1').resolve()} hold "
                   f"different plans (30 and 30 tasks, 0 in common; the specs: {spec.resolve()} "
                   f"and {other.resolve()}): merge joins run folders of one campaign. If the "
                   f"spec or an input file changed between these runs, run "
                   f"{folders[0].resolve()} again with the current spec (its done tasks are "
                   "kept), then merge\n")
    assert not merged.exists()
    # an existing destination of another campaign is refused too, and left as it was
    before = dump(folders[1])
    code, _, err = cli_call("merge", tmp_path / "o1", "--out", folders[1])
    assert code == 2 and "hold different plans" in err and dump(folders[1]) == before


def test_an_edit_between_shards_is_refused_unless_it_changes_no_task(tmp_path: Path,
                                                                    server) -> None:
    spec = write_spec(tmp_path, repeat=15)
    run(spec, tmp_path / "a", "1/2")
    # budget and a comment: the same tasks, so the same campaign
    text = spec.read_text()
    spec.write_text("# reviewed\n" + text.replace("max_usd: 5", "max_usd: 6"))
    run(spec, tmp_path / "b", "2/2")
    code, out, err = cli_call("merge", tmp_path / "a", tmp_path / "b", "--out", tmp_path / "m")
    assert code == 0 and "plan: 30 of 30 tasks recorded, 30 done" in out, err
    # one more repeat: two tasks more, so shard 2 ran another plan than shard 1
    write_spec(tmp_path, repeat=16)
    shutil.rmtree(tmp_path / "b")
    run(spec, tmp_path / "b", "2/2")
    code, out, err = cli_call("merge", tmp_path / "a", tmp_path / "b", "--out", tmp_path / "m2")
    assert code == 2 and "hold different plans (30 and 32 tasks, 30 in common;" in err
    assert f"run {(tmp_path / 'a').resolve()} again with the current spec" in err
    assert not (tmp_path / "m2").exists()
    # run the out-of-date shard again: its done tasks are kept, the new ones run; then it merges
    run(spec, tmp_path / "a", "1/2")
    code, out, err = cli_call("merge", tmp_path / "a", tmp_path / "b", "--out", tmp_path / "m2")
    assert code == 0 and "plan: 32 of 32 tasks recorded, 32 done" in out, err
    a = audit(billed(server), tmp_path / "m2")
    assert (a.done, a.billed_twice, a.lost, a.unknown_charges) == (32, 0, 0, 0)


def test_bad_merges_are_one_clear_line_and_exit_2(tmp_path: Path, server, shards) -> None:
    _spec, folders = shards
    (tmp_path / "empty").mkdir()
    code, out, err = cli_call("merge", folders[0], tmp_path / "empty", "--out", tmp_path / "m")
    assert (code, out) == (2, "") and err == (
        f"error: no run record in {(tmp_path / 'empty').resolve()} (expected "
        f"{record_path((tmp_path / 'empty').resolve())})\n")
    code, _, err = cli_call("merge", folders[0], "--out", folders[0])
    assert code == 2 and err == ("error: nothing to merge: name at least one run folder other "
                                 "than --out\n")
    code, _, err = cli_call("merge", folders[0])
    assert code == 2 and "the following arguments are required: --out" in err
    holder = open_record(folders[1])  # a run writing shard 2 right now
    try:
        code, _, err = cli_call("merge", *folders, "--out", tmp_path / "m")
    finally:
        holder.close()
    assert code == 2 and err == (f"error: the run folder {folders[1].resolve()} is in use by "
                                 f"a running specrunner (pid {os.getpid()}): merge it once "
                                 "that run has finished\n")
    assert not (tmp_path / "m").exists()


def placement_mark(folder: Path) -> list[tuple[str]]:
    """What the record keeps of the last ended run's plan placement (Record.plan)."""
    conn = sqlite3.connect(f"{record_path(folder).resolve().as_uri()}?mode=ro", uri=True)
    try:
        return list(conn.execute("SELECT value FROM meta WHERE key = 'placement'"))
    finally:
        conn.close()


def test_merging_into_a_shard_folder(tmp_path: Path, server, shards) -> None:
    spec, folders = shards
    assert len(placement_mark(folders[0])) == 1
    code, out, _ = cli_call("merge", folders[1], folders[2], "--out", folders[0])
    assert code == 0 and "plan: 30 of 30 tasks recorded, 30 done" in out
    # rows came from other folders: the next run checks every task's placement
    assert placement_mark(folders[0]) == []
    assert audit(billed(server), folders[0]).done == 30
    code, _, err = cli_call("run", spec, "--local", "--out", folders[0], "--shard", "1/3")
    assert code == 2 and "holds shard 2/3, shard 3/3; this run is shard 1/3" in err


def test_a_shard_run_twice_is_kept_once_and_costs_nothing_more(tmp_path: Path, server,
                                                              shards) -> None:
    spec, folders = shards
    twin = tmp_path / "shard-1-again"
    run(spec, twin, "1/3")  # the same taskUUIDs: the server answers from the first run
    n1 = len(read_snapshot(folders[0]).tasks)
    assert server.stats().duplicate_attempts_total == n1 and len(server.stats().charges) == 30
    code, out, _err = cli_call("merge", *folders, twin, "--out", tmp_path / "m")
    assert code == 0 and (f"duplicates: {n1} tasks done in more than one of these folders "
                          "(one copy kept); each under one taskUUID, so billed once") in out
    assert len(dump(tmp_path / "m")["tasks"]) == 30
    # the copy kept is the first done: shard-1's, whose images are the ones copied
    snap = read_snapshot(tmp_path / "m")
    first = {r.task_key: r.updated_at for r in read_snapshot(folders[0]).tasks}
    assert all(r.updated_at == first[r.task_key] for r in snap.tasks if r.task_key in first)


def _crafted(out: Path, spec: Path, states: dict[str, tuple[str, int]]) -> None:
    """A run folder for `spec`'s whole plan, as runs that stopped there would leave it: each
    variant in `states` moved to (state, generation) through the record's own events; "done"
    writes a made-up image (the server never saw that UUID)."""
    whole = build_plan(load_spec(spec))
    rec = open_record(out)
    try:
        run_id = rec.begin_run(RunMeta(
            spec_path=str(spec), spec_text=spec.read_text(), spec_sha256="x",
            plan_json=json.dumps([{"task_key": t.task_key} for t in whole.tasks]),
            max_usd=Decimal(5)))
        chosen = [t for t in whole.tasks if t.variant_id in states]
        rec.plan(run_id, chosen)

        async def events() -> None:
            from specrunner import runware

            log = rec.run_log(run_id)
            async with anyio.create_task_group() as tg:
                tg.start_soon(log.serve)
                for t in chosen:
                    state, gen = states[t.variant_id]
                    uuid = runware.task_uuid(t.task_key, gen)
                    old = "planned"
                    if gen:
                        await log.new_uuid(t.task_key, old, uuid, gen)
                    if state == "done":
                        log.sending(t.task_key, old, uuid, gen, 1)
                        log.results(t.task_key, "sending", [{"taskUUID": uuid, "cost": 0.08,
                                                             "imageURL": "http://x/y.png"}])
                        await log.done(t.task_key, "received",
                                       [(t.output_paths()[0], IMAGE,
                                         hashlib.sha256(IMAGE).hexdigest())], Decimal("0.08"))
                    elif state != "planned":
                        await log.ended(t.task_key, old, state, "x", "x")
                await log.close()

        anyio.run(events)
        rec.end_run(run_id, "stopped", 1, Decimal(0))
    finally:
        rec.close()


def test_a_task_paid_under_two_uuids_reports_what_the_second_cost(tmp_path: Path, server,
                                                                  shards) -> None:
    spec, folders = shards
    first = read_snapshot(folders[0]).tasks[0]
    _crafted(tmp_path / "x", spec, {first.variant_id: ("done", 1)})
    code, out, err = cli_call("merge", *folders, tmp_path / "x", "--out", tmp_path / "m")
    assert code == 0, err
    assert ("duplicates: 1 tasks done in more than one of these folders (one copy kept); 1 done "
            "under more than one taskUUID, each billed: $0.08 paid twice") in out
    row = next(r for r in read_snapshot(tmp_path / "m").tasks if r.task_key == first.task_key)
    assert (row.task_uuid, row.generation) == (first.task_uuid, 0)  # the first done is kept
    assert len(read_uuids(tmp_path / "m")) == 31  # both UUIDs stay known


def test_in_doubt_beats_failed_and_planned_and_the_next_run_asks_first(
        tmp_path: Path, server) -> None:
    spec = write_spec(tmp_path, repeat=2)  # 4 tasks
    names = [t.variant_id for t in build_plan(load_spec(spec)).tasks]
    # folder a: task 0 in doubt, task 1 failed at generation 1, task 2 planned
    _crafted(tmp_path / "a", spec, {names[0]: ("in_doubt", 0), names[1]: ("failed", 1),
                                    names[2]: ("planned", 0)})
    # folder b: task 0 failed, task 1 planned at generation 0, task 2 in doubt, task 3 done
    _crafted(tmp_path / "b", spec, {names[0]: ("failed", 0), names[1]: ("planned", 0),
                                    names[2]: ("in_doubt", 0), names[3]: ("done", 0)})
    code, out, err = cli_call("merge", tmp_path / "a", tmp_path / "b", "--out", tmp_path / "m")
    assert code == 0 and "plan: 4 of 4 tasks recorded, 1 done" in out
    assert err.startswith("3 recorded tasks are not done (failed, in doubt or pending): ")
    got = {r.variant_id: (r.state, r.generation) for r in read_snapshot(tmp_path / "m").tasks}
    assert got == {names[0]: ("in_doubt", 0), names[1]: ("failed", 1),
                   names[2]: ("in_doubt", 0), names[3]: ("done", 0)}


def test_a_missing_image_is_fetched_again_not_paid_again(tmp_path: Path, server,
                                                         shards) -> None:
    spec, folders = shards
    lost = read_snapshot(folders[1]).tasks[0]
    (folders[1] / lost.outputs[0]).unlink()
    damaged = read_snapshot(folders[2]).tasks[0]
    (folders[2] / damaged.outputs[0]).write_bytes(b"not the image")
    merged = tmp_path / "merged"
    code, out, err = cli_call("merge", *folders, "--out", merged)
    names = ", ".join(sorted([lost.variant_id, damaged.variant_id]))
    assert code == 0 and "plan: 30 of 30 tasks recorded, 28 done" in out
    assert err.splitlines()[0] == (
        f"warning: 2 done tasks had no intact image in any folder ({names}): merged as "
        f"received; `specrunner run {spec.resolve()} --out {merged.resolve()}` fetches them "
        "again (not paid again)")
    assert not (merged / lost.outputs[0]).exists() and not (merged / damaged.outputs[0]).exists()
    charges = dict(server.stats().charges)
    run(spec, merged)
    assert server.stats().charges == charges
    a = audit(billed(server), merged)
    assert (a.done, a.lost, a.billed_twice) == (30, 0, 0)
