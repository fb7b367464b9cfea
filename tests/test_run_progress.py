"""Progress output: the status line, plain periodic lines, the live TTY line, the summary."""

from __future__ import annotations

import io
from decimal import Decimal

import specrunner.run
from specrunner.run.context import Counters
from specrunner.run.progress import Progress, status_line, summary_table


class FakeClock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def counters(**kw) -> Counters:
    base = dict(total=100, skipped=10, done=30, failed=2, in_doubt=1, in_flight=8, retrying=3,
                spent=Decimal("3.36"), limit=16)
    base.update(kw)
    return Counters(**base)


def test_status_line_has_every_figure_and_an_eta() -> None:
    # 33 finished in 66 s -> 0.5/s; 100 - 10 - 33 = 57 left -> 114 s
    line = status_line(counters(), Decimal("20"), 66.0)
    assert line == ("40/100 done, 2 failed, 1 in doubt, 3 retrying, 8 in flight (limit 16), "
                    "$3.36 of $20.00, ETA 01:54")


def test_eta_unknown_before_anything_finished_and_hours_when_long() -> None:
    assert status_line(counters(done=0, failed=0, in_doubt=0), Decimal(5), 10.0).endswith(
        "ETA --:--")
    # 1 finished in 100 s, 89 left -> 8900 s = 2:28:20
    line = status_line(counters(done=1, failed=0, in_doubt=0), Decimal(5), 100.0)
    assert line.endswith("ETA 2:28:20")


def test_plain_lines_are_throttled_to_every_s() -> None:
    out, clock = io.StringIO(), FakeClock()
    p = Progress(out, Decimal("20"), clock, tty=False, every_s=10.0)
    c = counters(done=0, failed=0, in_doubt=0, skipped=0)
    p.tick(c)  # the first tick always shows
    clock.now += 4
    c.done = 5
    p.tick(c)  # throttled
    clock.now += 6
    c.done = 8
    p.tick(c)
    clock.now += 1
    p.tick(c, force=True)  # the closing line is forced
    lines = out.getvalue().splitlines()
    assert [ln.split(",")[0] for ln in lines] == ["0/100 done", "8/100 done", "8/100 done"]
    assert "\r" not in out.getvalue() and out.getvalue().endswith("\n")


def wide(stream: object) -> int:
    return 200


def test_tty_line_is_rewritten_in_place_and_padded() -> None:
    out, clock = FakeTTY(), FakeClock()
    p = Progress(out, Decimal("20"), clock, tty=True, width=wide)
    c = counters(retrying=12, in_flight=16)
    p.tick(c)
    first = status_line(c, Decimal("20"), 0.0)
    assert out.getvalue() == "\r" + first
    c.retrying, c.in_flight = 0, 4  # a shorter line must erase the tail of the longer one
    clock.now += 1
    p.tick(c)
    second = status_line(c, Decimal("20"), 1.0)
    assert len(second) == len(first) - 2
    assert out.getvalue() == "\r" + first + "\r" + second + "  "
    assert "\n" not in out.getvalue()


def test_tty_messages_replace_the_live_line_and_close_ends_it() -> None:
    out, clock = FakeTTY(), FakeClock()
    p = Progress(out, Decimal("20"), clock, tty=True, width=wide)
    c = counters()
    p.tick(c)
    p.message("interrupted: no new tasks")
    p.tick(c)
    p.close()
    p.close()  # idempotent
    line = status_line(c, Decimal("20"), 0.0)
    blank = "\r" + " " * len(line) + "\r"  # the live line erased, the message in its place
    assert out.getvalue() == ("\r" + line + blank + "interrupted: no new tasks\n" + "\r" + line
                              + "\n")


def test_the_live_line_never_wraps_in_a_narrow_terminal() -> None:
    c = counters(retrying=12, in_flight=256, limit=256, total=100000, done=54321,
                 spent=Decimal("4345.68"), campaign_spent=Decimal("4345.68"))
    full = status_line(c, Decimal("8000"), 66.0)
    assert len(full) > 80
    for width in (100, 80, 60, 40, 20):
        out = FakeTTY()
        p = Progress(out, Decimal("8000"), FakeClock(), tty=True, width=lambda s, w=width: w)
        p.tick(c)
        p.tick(c)
        drawn = out.getvalue().split("\r")
        assert all(len(part) <= width - 1 for part in drawn), (width, drawn)
    assert status_line(c, Decimal("8000"), 66.0, 79).startswith("54331/100000 done, 2 failed")


def test_a_change_of_the_limit_gets_a_line_with_its_cause() -> None:
    out = io.StringIO()
    p = Progress(out, Decimal("20"), FakeClock(), tty=False, every_s=1000)
    c = counters(limit=64)
    p.tick(c)
    c.limit, c.limit_reason = 44, "cut: http503"
    p.tick(c)
    c.limit, c.limit_reason = 45, "recovering"
    p.tick(c)
    lines = out.getvalue().splitlines()
    assert lines[1:] == ["concurrency limit 64 -> 44 (cut: http503)",
                         "concurrency limit 44 -> 45 (recovering)"]


def test_plain_messages_are_single_lines() -> None:
    out = io.StringIO()
    p = Progress(out, Decimal("1"), FakeClock(), tty=False)
    p.message("hello")
    p.close()
    assert out.getvalue() == "hello\n"


def test_summary_table_rows() -> None:
    c = counters(sends=40, retries=5, polls=70, campaign_spent=Decimal("4.00"),
                 price=Decimal("0.10"), table_price=Decimal("0.08"), price_source="reported")
    table = summary_table(c, Decimal("20"), "failed")
    width = table.splitlines()[0].index(" ") + 2
    rows = {ln[:width].strip(): ln[width:].strip() for ln in table.splitlines()[1:-1]}
    assert rows["tasks"] == "100" and rows["done before this run"] == "10"
    assert rows["done in this run"] == "30" and rows["failed"] == "2"
    assert rows["in doubt (the next run asks about them)"] == "1"
    assert rows["not started"] == "57" and rows["retries"] == "5"
    assert rows["requests sent (imageInference)"] == "40"
    assert rows["spent by this run (USD)"] == "3.36"
    assert rows["campaign spent (USD)"] == "4.00 of 20.00"
    assert rows["price per image (USD)"] == "0.10 as billed (table 0.08)"
    assert rows["status"] == "failed"


def test_run_command_draws_the_live_line_on_a_terminal(tmp_path, monkeypatch) -> None:
    from test_run_cli import write_spec

    from specrunner import cli
    from specrunner.local import LocalConfig, create_app
    from specrunner.run import set_testing

    app = create_app(LocalConfig(render=False))
    monkeypatch.setattr(specrunner.run, "local_server", lambda faults, state_dir=None: app)
    spec = write_spec(tmp_path)
    out, err = io.StringIO(), FakeTTY()
    set_testing(True)
    try:
        code = cli.run(["run", str(spec), "--local", "--out", str(tmp_path / "o")], out, err)
    finally:
        set_testing(False)
    assert code == 0
    text = err.getvalue()
    assert text.startswith("\r") and text.endswith("\n")  # auto: live line on a TTY
    last = text.rstrip("\n ").rsplit("\r", 1)[1]
    assert last.startswith("6/6 done, 0 in flight (limit 8), $0.48 of $5.00")
    # not a terminal: plain lines only
    out2, err2 = io.StringIO(), io.StringIO()
    set_testing(True)
    try:
        code = cli.run(["run", str(spec), "--local", "--out", str(tmp_path / "o2")], out2, err2)
    finally:
        set_testing(False)
    assert code == 0 and "\r" not in err2.getvalue()
    assert err2.getvalue().splitlines()[-1].startswith("6/6 done")
