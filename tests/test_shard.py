"""`--shard K/N` on `plan` and `run`: the slice (stable, an exact partition), its totals, its
budget (exact, rounded down, never more than max_usd in total), bad values, and a shard's run:
only its tasks are sent, its shard is recorded, another shard in its folder is refused."""

from __future__ import annotations

import csv
import io
import json
from decimal import Decimal
from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_run_cli import server, write_spec  # noqa: F401 (server: a fixture)

from specrunner import cli
from specrunner.errors import PlanLimitError, UsageError
from specrunner.plan import build_plan
from specrunner.plan.shard import Shard, budget_share, budget_unit, shard_of, shard_plan
from specrunner.record import read_snapshot
from specrunner.run import Runner
from specrunner.spec import load_spec


def cli_call(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = cli.run(list(argv), out, err)
    return code, out.getvalue(), err.getvalue()


def plan_of(folder: Path, repeat: int) -> object:
    spec = write_spec(folder, repeat=repeat)
    spec.write_text(spec.read_text().replace("max_usd: 5", "max_usd: 50"))
    return build_plan(load_spec(spec))


# -- the slice ---------------------------------------------------------------------------------

def test_the_shards_partition_the_plan_in_plan_order(tmp_path: Path) -> None:
    plan = plan_of(tmp_path, repeat=60)  # 120 tasks
    for n in range(1, 9):
        parts = [shard_plan(plan, Shard(k, n)) for k in range(1, n + 1)]
        keys = [t.task_key for p in parts for t in p.tasks]
        assert sorted(keys) == sorted(t.task_key for t in plan.tasks)  # every task once
        for k, p in enumerate(parts, 1):
            assert [t.index for t in p.tasks] == sorted(t.index for t in p.tasks)
            assert all(plan.tasks[t.index] is t for t in p.tasks)  # plan indexes kept
            assert all(int(t.task_key[:16], 16) % n + 1 == k for t in p.tasks)
            assert p.total_cost == sum(t.est_cost for t in p.tasks)
            assert p.total_images == sum(t.number_results for t in p.tasks)
        assert sum(p.total_cost for p in parts) == plan.total_cost
        for axis, values in plan.breakdown:  # the breakdowns add up to the plan's
            for av in values:
                got = [v for p in parts for a, vs in p.breakdown if a == axis
                       for v in vs if v.value == av.value]
                assert sum(v.tasks for v in got) == av.tasks
                assert sum(v.cost for v in got) == av.cost
    # 3 shards of 120 tasks: none empty, none far from a third
    sizes = [len(shard_plan(plan, Shard(k, 3)).tasks) for k in (1, 2, 3)]
    assert sum(sizes) == 120 and min(sizes) >= 25, sizes


def test_a_task_keeps_its_shard_when_other_tasks_come_and_go(tmp_path: Path) -> None:
    small = plan_of(tmp_path, repeat=20)
    big = plan_of(tmp_path, repeat=50)  # 60 more tasks; the first 40 are the same tasks
    common = {t.task_key for t in small.tasks} & {t.task_key for t in big.tasks}
    assert len(common) == 40
    for n in (2, 3, 8):
        for k in range(1, n + 1):
            a = {t.task_key for t in shard_plan(small, Shard(k, n)).tasks}
            b = {t.task_key for t in shard_plan(big, Shard(k, n)).tasks}
            assert a == b & common


def test_shard_of_is_the_documented_formula() -> None:
    key = "00000000000000ff" + "0" * 48
    assert [shard_of(key, n) for n in (1, 2, 3, 256)] == [1, 2, 1, 256]
    assert Shard(3, 256).holds(key) is False and Shard(256, 256).holds(key) is True


# -- the budget --------------------------------------------------------------------------------

@settings(max_examples=300, deadline=None)
@given(cents=st.lists(st.integers(0, 5000), min_size=1, max_size=12),
       extra=st.integers(0, 10**6), places=st.integers(0, 4))
def test_shard_budgets_are_exact_floors_that_never_add_up_past_max_usd(
        cents: list[int], extra: int, places: int) -> None:
    costs = [Decimal(c).scaleb(-2) for c in cents]  # each shard's estimate, whole cents
    total = sum(costs, Decimal(0))
    max_usd = total + Decimal(extra).scaleb(-places)  # the plan fits: build_plan checks it
    if max_usd == 0:
        return
    unit = budget_unit([max_usd, *costs])
    budgets = [budget_share(max_usd, c, total, unit, len(costs)) for c in costs]
    assert sum(budgets) <= max_usd
    assert max_usd - sum(budgets) < unit * len(costs)
    for c, b in zip(costs, budgets, strict=True):
        assert b >= c  # every shard can afford its own estimate
        if total:
            exact = Fraction(max_usd) * Fraction(c) / Fraction(total)
            assert Fraction(b) <= exact < Fraction(b) + Fraction(unit)  # the floor, exactly


def test_the_budget_unit_follows_the_finest_amount() -> None:
    assert budget_unit([Decimal("10"), Decimal("0.08")]) == Decimal("0.01")
    assert budget_unit([Decimal("10"), Decimal("0.0125")]) == Decimal("0.0001")
    assert budget_unit([Decimal("7.123"), Decimal("0.08")]) == Decimal("0.001")
    # a third of a dollar cannot be written exactly: rounded down, never up
    assert budget_share(Decimal(1), Decimal("0.08"), Decimal("0.24"), Decimal("0.01"), 3) \
        == Decimal("0.33")


def test_a_shard_budget_is_its_share_or_the_explicit_one(tmp_path: Path) -> None:
    plan = build_plan(load_spec(write_spec(tmp_path, repeat=15)))  # 30 tasks, $2.40, budget $5
    parts = [shard_plan(plan, Shard(k, 3)) for k in (1, 2, 3)]
    for p in parts:
        share = Fraction(5) * Fraction(p.total_cost) / Fraction(plan.total_cost)
        assert Fraction(p.spec.budget.max_usd) <= share < Fraction(p.spec.budget.max_usd) \
            + Fraction(1, 100)
    assert sum(p.spec.budget.max_usd for p in parts) <= 5
    one = shard_plan(plan, Shard(1, 3), Decimal("9"))
    assert one.spec.budget.max_usd == 9 and one.tasks == parts[0].tasks
    with pytest.raises(PlanLimitError, match=r"shard 1/3 needs \$\d\.\d\d for \d+ images; its "
                       r"budget \(--max-usd\) is \$0\.01"):
        shard_plan(plan, Shard(1, 3), Decimal("0.01"))


# -- bad values --------------------------------------------------------------------------------

BAD = {
    "0/3": "bad shard '0/3': K counts from 1 to N (the shards of 3 are 1/3 to 3/3)",
    "4/3": "bad shard '4/3': K counts from 1 to N (the shards of 3 are 1/3 to 3/3)",
    "a/b": "bad shard 'a/b': write K/N with whole numbers, K from 1 to N (e.g. 2/3: the "
           "second of three shards)",
    "1/0": "bad shard '1/0': N, the number of shards, must be at least 1",
    "-1/3": "bad shard '-1/3': write K/N with whole numbers, K from 1 to N (e.g. 2/3: the "
            "second of three shards)",
    "2": "bad shard '2': write K/N with whole numbers, K from 1 to N (e.g. 2/3: the second "
         "of three shards)",
    "1/100001": "bad shard '1/100001': at most 100,000 shards",
    "1" * 40 + "/3": "bad shard '" + "1" * 40 + "/3': write K/N with whole numbers, K from 1 "
                     "to N (e.g. 2/3: the second of three shards)",
}


@pytest.mark.parametrize("value", sorted(BAD))
@pytest.mark.parametrize("command", ["plan", "run"])
def test_bad_shard_values_are_one_clear_line_and_exit_2(tmp_path: Path, server, value: str,
                                                        command: str) -> None:
    spec = write_spec(tmp_path)
    extra = ["--local", "--progress", "none"] if command == "run" else []
    code, out, err = cli_call(command, str(spec), f"--shard={value}", "--out",
                              str(tmp_path / "o"), *extra)
    assert (code, out, err) == (2, "", f"error: {BAD[value]}\n")
    assert not (tmp_path / "o").exists() and server.stats().http_requests == 0
    with pytest.raises(UsageError, match="bad shard"):
        Shard.parse(value)


def test_runner_refuses_a_bad_shard_before_anything(tmp_path: Path) -> None:
    plan = plan_of(tmp_path, repeat=1)
    with pytest.raises(UsageError, match=r"^bad shard '3/2'"):
        Runner(plan, local=True, shard="3/2", out_dir=tmp_path / "o")
    assert not (tmp_path / "o").exists()


# -- plan --shard ------------------------------------------------------------------------------

def test_plan_shows_the_shard_its_totals_and_why_its_budget(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, repeat=15)
    whole = build_plan(load_spec(spec))
    part = shard_plan(whole, Shard(2, 3))
    n, cost, budget = len(part.tasks), part.total_cost, part.spec.budget.max_usd
    code, out, _ = cli_call("plan", str(spec), "--shard", "2/3", "--all")
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == (f"shard 2/3: {n} of 30 tasks, est. ${cost} of $2.40; budget ${budget} "
                        f"($5.00 x ${cost}/$2.40, rounded down)")
    assert lines[1] == (f"plan demo: {n} tasks, {n} images, estimated ${cost} (budget "
                        f"${budget}, max 10,000 tasks)")
    assert sum(line.startswith(("DESIGN", "REALISTIC")) for line in lines) == n

    code, out, _ = cli_call("plan", str(spec), "--shard", "2/3", "--format", "json")
    doc = json.loads(out)
    assert doc["shard"] == {"shard": "2/3", "of_tasks": 30, "of_est_cost": "2.40",
                            "budget": "share"}
    assert doc["totals"]["tasks"] == n == len(doc["tasks"])
    assert doc["totals"]["est_cost"] == str(cost) and doc["totals"]["max_usd"] == str(budget)
    assert [t["task_key"] for t in doc["tasks"]] == [t.task_key for t in part.tasks]
    assert [t["index"] for t in doc["tasks"]] == [t.index for t in part.tasks]

    code, out, _ = cli_call("plan", str(spec), "--shard", "2/3", "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [r["task_key"] for r in rows] == [t.task_key for t in part.tasks]

    code, out, _ = cli_call("plan", str(spec), "--shard", "2/3", "--max-usd", "0.01")
    assert code == 2  # --max-usd is the shard's budget: the campaign's $2.40 was not checked
    code, out, _ = cli_call("plan", str(spec), "--shard", "2/3", "--max-usd", "4")
    assert code == 0 and out.splitlines()[0].endswith("budget $4.00 (set by --max-usd)")
    code, out, _ = cli_call("plan", str(spec), "--max-usd", "4")  # without --shard: the plan's
    assert code == 0 and "(budget $4.00," in out.splitlines()[0]

    variant = part.tasks[0].variant_id
    code, out, _ = cli_call("plan", str(spec), "--shard", "1/3", "--explain", variant)
    assert code == 0 and out.splitlines()[-1] == "  shard: 2/3 (this is 1/3)"


# -- run --shard -------------------------------------------------------------------------------

def test_a_shard_runs_its_tasks_only_records_its_shard_and_keeps_its_folder(
        tmp_path: Path, server) -> None:
    spec = write_spec(tmp_path, repeat=15)
    whole = build_plan(load_spec(spec))
    part = shard_plan(whole, Shard(2, 3))
    out_dir = tmp_path / "shard-2"
    code, _out, err = cli_call("run", str(spec), "--local", "--shard", "2/3", "--out",
                               str(out_dir), "--progress", "none")
    assert code == 0, err
    assert err.splitlines()[0].startswith(f"shard 2/3: {len(part.tasks)} of 30 tasks")
    assert set(server.stats().charges) == {t.task_uuid for t in part.tasks}
    snap = read_snapshot(out_dir)
    (run,) = snap.runs
    assert (run.shard, run.status, run.max_usd) == ("2/3", "complete", part.spec.budget.max_usd)
    # the run records the whole plan (which campaign this is) and the tasks of its shard
    assert snap.plan_keys() == tuple(t.task_key for t in whole.tasks)
    assert [r.task_key for r in snap.tasks] == [t.task_key for t in part.tasks]
    assert sorted(p.name for p in out_dir.iterdir() if p.is_file()) == \
        sorted(t.output_paths()[0] for t in part.tasks)

    # the same shard again: nothing to do; another shard in its folder: refused, nothing sent
    before = server.stats().http_requests
    assert cli_call("run", str(spec), "--local", "--shard", "2/3", "--out", str(out_dir),
                    "--progress", "none")[0] == 0
    code, _out, err = cli_call("run", str(spec), "--local", "--shard", "1/3", "--out",
                               str(out_dir), "--progress", "none")
    assert code == 2 and err.splitlines()[-1] == (
        f"error: the run folder {out_dir.resolve()} holds shard 2/3; this run is shard 1/3: "
        "give each shard its own --out, then join them with `specrunner merge`")
    assert server.stats().http_requests == before and len(read_snapshot(out_dir).runs) == 2

    # the whole campaign may always run there: it sends what the shard did not
    code, _out, err = cli_call("run", str(spec), "--local", "--out", str(out_dir),
                               "--progress", "none")
    assert code == 0 and len(server.stats().charges) == 30
    assert [r.shard for r in read_snapshot(out_dir).runs] == ["2/3", "2/3", None]
    code, _out, err = cli_call("run", str(spec), "--local", "--shard", "2/3", "--out",
                               str(out_dir), "--progress", "none")
    assert code == 2 and "holds the whole plan (runs without --shard)" in err


def test_a_shard_run_and_its_dry_run_under_an_explicit_budget(tmp_path: Path, server) -> None:
    spec = write_spec(tmp_path, repeat=15)
    code, out, err = cli_call("run", str(spec), "--local", "--shard", "3/3", "--out",
                              str(tmp_path / "o"), "--dry-run", "--max-usd", "2")
    part = shard_plan(build_plan(load_spec(spec)), Shard(3, 3))
    assert code == 0 and out == (f"dry run: {len(part.tasks)} tasks planned; {len(part.tasks)} "
                                 f"would run (est. ${part.total_cost}); budget $2.00; nothing "
                                 "sent\n")
    assert not (tmp_path / "o").exists()
    code, out, err = cli_call("run", str(spec), "--local", "--shard", "3/3", "--out",
                              str(tmp_path / "o"), "--max-usd", "0.08", "--progress", "none")
    assert code == 2 and "error: shard 3/3 needs" in err and not (tmp_path / "o").exists()
    code, out, err = cli_call("run", str(spec), "--local", "--shard", "3/3", "--out",
                              str(tmp_path / "o"), "--max-usd", "2", "--progress", "none")
    assert code == 0 and read_snapshot(tmp_path / "o").runs[0].max_usd == Decimal("2")


def test_an_empty_shard_runs_records_itself_and_sends_nothing(tmp_path: Path, server) -> None:
    plan = plan_of(tmp_path, repeat=1)  # 2 tasks: most of 16 shards are empty
    empty = next(k for k in range(1, 17) if not shard_plan(plan, Shard(k, 16)).tasks)
    result = Runner(plan, local=server, shard=f"{empty}/16", out_dir=tmp_path / "o").run_sync()
    assert (result.status, result.exit_code, result.counters.total) == ("complete", 0, 0)
    assert server.stats().http_requests == 0
    assert read_snapshot(tmp_path / "o").runs[0].shard == f"{empty}/16"


def test_the_runner_api_takes_the_whole_plan_and_a_shard(tmp_path: Path, server) -> None:
    plan = plan_of(tmp_path, repeat=6)
    part = shard_plan(plan, Shard(1, 2))
    runner = Runner(plan, local=server, shard="1/2", out_dir=tmp_path / "o")
    assert runner.counters.total == len(part.tasks)
    assert runner.spec.budget.max_usd == part.spec.budget.max_usd
    result = runner.run_sync()
    assert result.status == "complete" and result.counters.done == len(part.tasks)
    assert result.max_usd == part.spec.budget.max_usd
    assert set(server.stats().charges) == {t.task_uuid for t in part.tasks}
