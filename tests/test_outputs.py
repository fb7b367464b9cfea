"""Output files: temp + durable + rename + fsync(dir), in the file helper or in a thread."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import anyio
import pytest

from specrunner.batching import Writer
from specrunner.outputs import FileSink, _helper_lib, write_atomic
from test_run_support import planned_store, states_after, to_state

# `stat -f -c %T` names of the filesystems whose syncfs the helper trusts (ext4 shows as
# "ext2/ext3"): an oracle independent of the helper's own statfs call.
FULL_FLUSH = {"ext2/ext3", "xfs", "btrfs", "tmpfs", "f2fs"}


def kernel_reports_syncfs_errors() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    release = os.uname().release.split("-")[0].split(".")
    return (int(release[0]), int(release[1])) >= (5, 8)


def test_write_atomic_replaces_without_leaving_temp_files(tmp_path: Path) -> None:
    write_atomic(tmp_path, "a/b.png", b"one")
    write_atomic(tmp_path, "a/b.png", b"two")
    assert (tmp_path / "a" / "b.png").read_bytes() == b"two"
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["b.png"]


@pytest.mark.parametrize("use_helper,batch_sync", [(True, True), (True, False), (False, False)],
                         ids=["helper-batch-sync", "helper-per-file", "in-thread"])
def test_file_sink_places_batches_and_reports_a_bad_target_alone(
        tmp_path: Path, use_helper: bool, batch_sync: bool) -> None:
    (tmp_path / "blocker").write_bytes(b"a file, not a folder")
    (tmp_path / "new" / "deep" / "taken.png").mkdir(parents=True)  # the rename fails

    async def main() -> dict[str, BaseException | None]:
        sink = FileSink(use_helper=use_helper, batch_sync=batch_sync)
        outcome: dict[str, BaseException | None] = {}

        async def one(rel: str, data: bytes) -> None:
            try:
                await sink.write([(tmp_path, rel, data)])
                outcome[rel] = None
            except OSError as exc:
                outcome[rel] = exc

        async with anyio.create_task_group() as tg:
            tg.start_soon(sink.run)
            async with anyio.create_task_group() as inner:
                for i in range(20):
                    inner.start_soon(one, f"new/deep/{i}.png", b"x" * i)
                inner.start_soon(one, "blocker/under-a-file.png", b"y")
                inner.start_soon(one, "new/deep/taken.png", b"z")
            await sink.close()
        return outcome

    outcome = anyio.run(main)
    assert isinstance(outcome.pop("blocker/under-a-file.png"), OSError)
    assert isinstance(outcome.pop("new/deep/taken.png"), OSError)
    assert outcome == {f"new/deep/{i}.png": None for i in range(20)}
    names = sorted(p.name for p in (tmp_path / "new" / "deep").iterdir())
    # no temporary file left behind, even by the file whose rename failed
    assert names == sorted([f"{i}.png" for i in range(20)] + ["taken.png"])
    assert (tmp_path / "new" / "deep" / "taken.png").is_dir()
    assert (tmp_path / "new" / "deep" / "7.png").read_bytes() == b"x" * 7


def test_file_sink_survives_its_helper_dying(tmp_path: Path) -> None:
    async def main() -> tuple[BaseException | None, bytes]:
        sink = FileSink()
        async with anyio.create_task_group() as tg:
            tg.start_soon(sink.run)
            await sink.write([(tmp_path, "first.png", b"1")])
            assert sink._helper is not None
            sink._helper.proc.kill()
            sink._helper.proc.wait()
            err: BaseException | None = None
            try:
                await sink.write([(tmp_path, "lost.png", b"2")])
            except OSError as exc:
                err = exc
            await sink.write([(tmp_path, "again.png", b"3")])  # a fresh helper
            await sink.close()
        return err, (tmp_path / "again.png").read_bytes()

    err, again = anyio.run(main)
    assert isinstance(err, OSError) and again == b"3"
    assert (tmp_path / "first.png").read_bytes() == b"1"


@pytest.mark.skipif(shutil.which("stat") is None, reason="needs coreutils stat")
def test_batch_sync_is_chosen_only_where_syncfs_is_a_full_flush(tmp_path: Path) -> None:
    lib = _helper_lib()
    batch, per_file = lib["Durability"](True), lib["Durability"](False)
    places = [tmp_path] + [Path(p) for p in ("/dev/shm", "/proc/self")
                           if Path(p).is_dir() and os.access(p, os.R_OK)]
    seen = {}
    for place in places:
        name = subprocess.run(["stat", "-f", "-c", "%T", str(place)], capture_output=True,
                              text=True, check=True).stdout.strip()
        fd = os.open(place, os.O_RDONLY)
        try:
            dev = os.fstat(fd).st_dev
            seen[name] = batch.can_batch(fd, dev)
            assert per_file.can_batch(fd, dev) is False
        finally:
            os.close(fd)
    assert seen == {n: kernel_reports_syncfs_errors() and n in FULL_FLUSH for n in seen}


def test_a_failed_batch_sync_places_no_file_of_that_filesystem(tmp_path: Path) -> None:
    lib = _helper_lib()
    durability = lib["Durability"](True)
    fd = os.open(tmp_path, os.O_RDONLY)
    try:
        batched = durability.can_batch(fd, os.fstat(fd).st_dev)
    finally:
        os.close(fd)
    if not batched:
        pytest.skip("no batch sync on this filesystem or kernel")
    calls = []

    def broken_syncfs(fd: int) -> None:
        calls.append(fd)
        raise OSError(errno.EIO, "Input/output error")

    durability.syncfs = broken_syncfs
    (tmp_path / "kept.png").write_bytes(b"old")  # an earlier output must survive untouched
    files = [(os.fsencode(tmp_path / "a" / f"{i}.png"), b"x" * i) for i in range(5)]
    files.append((os.fsencode(tmp_path / "kept.png"), b"new"))
    status = lib["place_batch"](files, durability)
    assert len(calls) == 1  # one syncfs for the whole batch, on one filesystem
    assert {os.fsdecode(t): code for t, (code, _) in status.items()} == \
        {os.fsdecode(t): errno.EIO for t, _ in files}
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == []  # no temp file left
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "kept.png"]
    assert (tmp_path / "kept.png").read_bytes() == b"old"


def test_a_working_batch_sync_places_every_file(tmp_path: Path) -> None:
    lib = _helper_lib()
    files = [(os.fsencode(tmp_path / "d" / f"{i}.png"), bytes([i]) * 10) for i in range(30)]
    status = lib["place_batch"](files, lib["Durability"](True))
    assert all(code == 0 for code, _ in status.values()) and len(status) == 30
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == \
        sorted(f"{i}.png" for i in range(30))
    assert (tmp_path / "d" / "7.png").read_bytes() == bytes([7]) * 10


def test_closing_the_sink_waits_for_its_helper_to_exit_off_the_event_loop(tmp_path: Path) -> None:
    released: list[bool] = []
    ticks: list[int] = []

    async def main() -> Any:
        sink = FileSink()
        async with anyio.create_task_group() as tg:
            tg.start_soon(sink.run)
            await sink.write([(tmp_path, "a.png", b"1")])
            helper = sink._helper
            assert helper is not None
            real_reap = helper._reap
            go = threading.Event()

            def slow_reap() -> None:  # a helper slow to exit: until the loop has ticked
                released.append(go.wait(10))
                real_reap()

            helper._reap = slow_reap  # type: ignore[method-assign]

            async def tick() -> None:
                await anyio.sleep(0.05)
                ticks.append(1)
                go.set()

            tg.start_soon(tick)
            await sink.close()
            assert helper.proc.returncode is not None  # it had exited when close() returned
            return helper

    helper = anyio.run(main)
    assert released == [True] and ticks == [1]  # the loop ran while close() waited
    assert helper.proc.returncode == 0  # and close() returned once it had exited, cleanly
    assert (tmp_path / "a.png").read_bytes() == b"1"


def test_a_file_write_returns_once_its_files_are_placed_and_its_after_ops_committed(
        tmp_path: Path) -> None:
    store, tasks = planned_store(tmp_path, 2)
    (tmp_path / "blocker").write_bytes(b"a file, not a folder")
    returned: list[str] = []
    failed: list[BaseException] = []

    async def main() -> None:
        writer = Writer(store)
        sink = FileSink(writer)
        gate = anyio.Event()
        real_apply = writer._apply

        async def held(statements: Any) -> None:  # the commit waits for the gate
            await gate.wait()
            await real_apply(statements)

        writer._apply = held  # type: ignore[method-assign]

        async def ok() -> None:
            await sink.write([(tmp_path, "ok.png", b"1")], after=to_state(tasks[0], "done"))
            returned.append("ok")

        async def bad() -> None:
            try:
                await sink.write([(tmp_path, "blocker/bad.png", b"2")], after=to_state(tasks[1], "done"))
            except OSError as exc:
                failed.append(exc)

        async with anyio.create_task_group() as tg:
            tg.start_soon(writer.run)
            tg.start_soon(sink.run)
            tg.start_soon(ok)
            tg.start_soon(bad)
            try:
                with anyio.fail_after(20):
                    while not (tmp_path / "ok.png").exists() or not failed:
                        await anyio.sleep(0.01)
                await anyio.sleep(0.2)
                assert returned == []  # its file is in place, but "done" is not committed yet
            finally:
                gate.set()  # (a failing test must not leave the writer's commit held)
            with anyio.fail_after(20):
                while not returned:
                    await anyio.sleep(0.01)
            await sink.close()
            await writer.close()

    states = states_after(store, main, tasks)
    assert returned == ["ok"] and len(failed) == 1
    assert states == ["done", "planned"]  # no "done" for the file that could not be written
    assert (tmp_path / "ok.png").read_bytes() == b"1"
