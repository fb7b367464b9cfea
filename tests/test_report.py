"""Exact report output on the recorded fixture run (tests/fixtures/run_fixture).

The fixture is a real run of fixture/spec.yaml against the local server with injected clocks
(make_fixture.py): 5 tasks, one refused by the content policy, one with 1 of 2 results
refused, two retried under fresh UUIDs after provider timeouts (twice each), one never sent
(the run was interrupted).
"""

from __future__ import annotations

import io
import json
import shutil
import sqlite3
from pathlib import Path

import pytest

from specrunner import cli, report
from specrunner.record import open_record

FIXTURE = Path(__file__).parent / "fixtures" / "run_fixture"


@pytest.fixture()
def fixture_run(tmp_path: Path) -> Path:
    """A private copy of the fixture (spec, images, run): reports may write next to it."""
    dest = tmp_path / "fx"
    shutil.copytree(FIXTURE, dest, ignore=shutil.ignore_patterns("expected", "__pycache__"))
    return dest


def run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = cli.run(["report", *argv], out, err)
    return code, out.getvalue(), err.getvalue()


TABLE = """\
run report-fixture: interrupted, 1 run(s), started 2026-01-01T00:00:00Z, ended 2026-01-01T00:00:32Z

total                            value
-------------------------------  --------------------------------
tasks                            5
images                           3
images refused (content policy)  1
succeeded                        3
failed                           1
pending                          1
in doubt                         0
failed by category               safety 1
estimated spend                  $0.48
actual spend                     $0.24
spend per image                  $0.08
campaign spend (every run)       $0.24
retries                          4
fresh UUIDs (provider failures)  4
wall time                        31.750 s
request latency                  p50 0.500 s, p95 0.750 s (n=19)
task latency (send->done)        p50 10.750 s, p95 10.750 s (n=3)
budget                           $1.00

by input

input      tasks    images    done    failed    pending    in doubt    est. USD    actual USD
-------  -------  --------  ------  --------  ---------  ----------  ----------  ------------
bakery         2         1       1         1          0           0        0.24          0.08
diner          2         1       1         0          1           0        0.16          0.08
remote         1         1       1         0          0           0        0.08          0.08

by styleType

styleType      tasks    images    done    failed    pending    in doubt    est. USD    actual USD
-----------  -------  --------  ------  --------  ---------  ----------  ----------  ------------
DESIGN             3         3       3         0          0           0        0.32          0.24
REALISTIC          2         0       0         1          1           0        0.16          0.00

by numberResults

numberResults      tasks    images    done    failed    pending    in doubt    est. USD    actual USD
---------------  -------  --------  ------  --------  ---------  ----------  ----------  ------------
2                      1         1       1         0          0           0        0.16          0.08
-                      4         2       2         1          1           0        0.32          0.16

by error code

code                    category      tasks
----------------------  ----------  -------
contentPolicyViolation  safety            2

failures

variant           status    code                    message
----------------  --------  ----------------------  -----------------------------------------------
bakery-DESIGN-2   done      contentPolicyViolation  1 of 2 results refused
bakery-REALISTIC  failed    contentPolicyViolation  result blocked by the content policy (injected)

note: 5 task(s) ran with magicPrompt ON or AUTO: the provider may rewrite their prompts, so the same spec can give other images
"""

MARKDOWN = """\
## run report-fixture: interrupted, 1 run(s), started 2026-01-01T00:00:00Z, ended 2026-01-01T00:00:32Z

| total                           | value                            |
|---------------------------------|----------------------------------|
| tasks                           | 5                                |
| images                          | 3                                |
| images refused (content policy) | 1                                |
| succeeded                       | 3                                |
| failed                          | 1                                |
| pending                         | 1                                |
| in doubt                        | 0                                |
| failed by category              | safety 1                         |
| estimated spend                 | $0.48                            |
| actual spend                    | $0.24                            |
| spend per image                 | $0.08                            |
| campaign spend (every run)      | $0.24                            |
| retries                         | 4                                |
| fresh UUIDs (provider failures) | 4                                |
| wall time                       | 31.750 s                         |
| request latency                 | p50 0.500 s, p95 0.750 s (n=19)  |
| task latency (send->done)       | p50 10.750 s, p95 10.750 s (n=3) |
| budget                          | $1.00                            |

### by input

| input   |   tasks |   images |   done |   failed |   pending |   in doubt |   est. USD |   actual USD |
|---------|---------|----------|--------|----------|-----------|------------|------------|--------------|
| bakery  |       2 |        1 |      1 |        1 |         0 |          0 |       0.24 |         0.08 |
| diner   |       2 |        1 |      1 |        0 |         1 |          0 |       0.16 |         0.08 |
| remote  |       1 |        1 |      1 |        0 |         0 |          0 |       0.08 |         0.08 |

### by styleType

| styleType   |   tasks |   images |   done |   failed |   pending |   in doubt |   est. USD |   actual USD |
|-------------|---------|----------|--------|----------|-----------|------------|------------|--------------|
| DESIGN      |       3 |        3 |      3 |        0 |         0 |          0 |       0.32 |         0.24 |
| REALISTIC   |       2 |        0 |      0 |        1 |         1 |          0 |       0.16 |         0.00 |

### by numberResults

| numberResults   |   tasks |   images |   done |   failed |   pending |   in doubt |   est. USD |   actual USD |
|-----------------|---------|----------|--------|----------|-----------|------------|------------|--------------|
| 2               |       1 |        1 |      1 |        0 |         0 |          0 |       0.16 |         0.08 |
| -               |       4 |        2 |      2 |        1 |         1 |          0 |       0.32 |         0.16 |

### by error code

| code                   | category   |   tasks |
|------------------------|------------|---------|
| contentPolicyViolation | safety     |       2 |

### failures

| variant          | status   | code                   | message                                         |
|------------------|----------|------------------------|-------------------------------------------------|
| bakery-DESIGN-2  | done     | contentPolicyViolation | 1 of 2 results refused                          |
| bakery-REALISTIC | failed   | contentPolicyViolation | result blocked by the content policy (injected) |

note: 5 task(s) ran with magicPrompt ON or AUTO: the provider may rewrite their prompts, so the same spec can give other images
"""

CSV = """\
variant,status,input,prompt,styleType,numberResults,image_index,path,sha256,bytes,cost_usd,seed,image_uuid,task_key,verdict,note
bakery-DESIGN-2,done,bakery,neon,DESIGN,2,0,bakery-DESIGN-1.png,8cec3279e3ed3f66754af5081623825394f8541ba8351a7c111585e45077e842,2056,0.08,8445862697981787208,7b247919-5ac7-4209-b4c3-fb0794fb7fe5,03076767b0ade7f99b4ff00102faff0237f60bb4d1d3e91cccb1e41fc4144cbd,pending,
diner-DESIGN,done,diner,neon,DESIGN,-,0,diner-DESIGN.png,62e861a97d4df36c38ac5a94de0d066a83788091a1f40f9d551cee43a44e995e,2300,0.08,6698897233646220573,10653c38-c009-43bf-94a4-aac9ee17615b,39eb46d527a4427b9ca0075a9353399bbecdd3c863712286001edc1aa10898ff,pending,
remote-DESIGN,done,remote,neon,DESIGN,-,0,remote-DESIGN.png,eadedd947c7a3ab7f3e3af92b1b6e20a4702137a7e4233ee3967b6b462070b70,39235,0.08,823996025897669996,ea3d1603-b7e4-4d24-bf94-81ff841390a5,2fede8280b1914fb0eab9699b59d8ca9fa1df883303ffedbaf673833e13b8813,pending,
"""


def test_table_exact(fixture_run: Path) -> None:
    assert run_cli(str(fixture_run / "run")) == (0, TABLE, "")


def test_markdown_exact(fixture_run: Path) -> None:
    assert run_cli(str(fixture_run / "run"), "--format", "markdown") == (0, MARKDOWN, "")


def test_csv_exact_one_row_per_result_image(fixture_run: Path) -> None:
    assert run_cli(str(fixture_run / "run"), "--format", "csv") == (0, CSV, "")


def test_json_exact(fixture_run: Path) -> None:
    expected = (FIXTURE / "expected" / "report.json").read_text(encoding="utf-8")
    expected = expected.replace("$FIXTURE", str(fixture_run))  # the review file's folder
    code, text, err = run_cli(str(fixture_run / "run"), "--format", "json")
    assert (code, err) == (0, "")
    assert text == expected


def test_spec_target_finds_the_run_through_output_dir(fixture_run: Path) -> None:
    assert run_cli(str(fixture_run / "spec.yaml")) == (0, TABLE, "")


def test_axes_come_from_the_record_whatever_the_task_keys(fixture_run: Path) -> None:
    """Tasks recorded under other keys (a change of task identity) keep their axes."""
    db = fixture_run / "run" / ".specrunner" / "run.db"
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE tasks SET task_key = 'old-' || task_key")
        conn.execute("UPDATE results SET task_key = 'old-' || task_key")
        conn.execute("UPDATE attempts SET task_key = 'old-' || task_key")
        conn.execute("UPDATE transitions SET task_key = 'old-' || task_key")
    assert run_cli(str(fixture_run / "run")) == (0, TABLE, "")


def test_by_chosen_axes_and_out_file(fixture_run: Path, tmp_path: Path) -> None:
    dest = tmp_path / "r.json"
    code, text, err = run_cli(str(fixture_run / "run"), "--format", "json", "--by",
                              "styleType,prompt", "--out", str(dest))
    assert (code, text, err) == (0, "", "")
    doc = json.loads(dest.read_text())
    assert list(doc["breakdown"]) == ["styleType", "prompt"]
    assert doc["breakdown"]["prompt"] == [{
        "value": "neon", "tasks": 5, "images": 3, "succeeded": 3, "failed": 1, "pending": 1,
        "in_doubt": 0, "estimated_usd": "0.48", "actual_usd": "0.24"}]


def test_unknown_axis_is_a_usage_error(fixture_run: Path) -> None:
    code, text, err = run_cli(str(fixture_run / "run"), "--by", "stlyeType")
    assert (code, text) == (2, "")
    assert err == ("error: unknown axis 'stlyeType'; this run's axes: input, prompt, "
                   "styleType, numberResults\n")


def test_missing_and_damaged_records_exit_2(tmp_path: Path) -> None:
    code, _, err = run_cli(str(tmp_path))
    assert code == 2 and err == f"error: no run record in {tmp_path} (expected " \
                                f"{tmp_path / '.specrunner' / 'run.db'})\n"
    (tmp_path / ".specrunner").mkdir()
    (tmp_path / ".specrunner" / "run.db").write_bytes(b"not a database at all" * 100)
    code, out, err = run_cli(str(tmp_path))
    assert (code, out) == (2, "")
    assert err.startswith("error: the run record ") and "damaged" in err
    code, _, err = run_cli(str(tmp_path / "nowhere"))
    assert code == 2 and "neither a run folder nor a spec file" in err


def test_foreign_sqlite_database_is_refused(tmp_path: Path) -> None:
    (tmp_path / ".specrunner").mkdir()
    sqlite3.connect(tmp_path / ".specrunner" / "run.db").executescript(
        "CREATE TABLE tasks (x); INSERT INTO tasks VALUES (1);")
    code, _, err = run_cli(str(tmp_path))
    assert code == 2 and "not a specrunner run record" in err


def test_in_doubt_tasks_are_counted_as_such(fixture_run: Path) -> None:
    db = fixture_run / "run" / ".specrunner" / "run.db"
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE tasks SET state='accepted' WHERE variant_id='diner-REALISTIC'")
    s = report.summarize(report.load_run(fixture_run / "run"))
    totals = dict(s.totals)
    assert (totals["pending"], totals["in_doubt"], totals["failed"]) == (0, 1, 1)
    assert [(t.variant_id, t.status) for t in s.failures] == [
        ("bakery-DESIGN-2", "done"), ("bakery-REALISTIC", "failed"),
        ("diner-REALISTIC", "in_doubt")]


def test_report_reads_a_run_that_is_still_writing(fixture_run: Path) -> None:
    """A runner holds the lock and is in the middle of a commit: report reads the last one."""
    record = open_record(fixture_run / "run")
    writer = sqlite3.connect(fixture_run / "run" / ".specrunner" / "run.db", isolation_level=None)
    try:
        writer.execute("BEGIN IMMEDIATE")  # (what the record's commit thread does)
        writer.execute("UPDATE tasks SET state='sending' WHERE variant_id='diner-REALISTIC'")
        writer.execute("UPDATE runs SET status='running', ended_at=NULL")
        code, text, err = run_cli(str(fixture_run / "run"))
        assert (code, text, err) == (0, TABLE, "")  # uncommitted: not visible yet
        writer.execute("COMMIT")
        code, text, err = run_cli(str(fixture_run / "run"), "--format", "json")
        doc = json.loads(text)
        assert (doc["run"]["status"], doc["run"]["ended_at"]) == ("running", None)
        assert (doc["totals"]["pending"], doc["totals"]["in_doubt"]) == (0, 1)
        # wall time of an unfinished run: up to its last recorded transition
        assert doc["totals"]["wall_s"] == 31.5
    finally:
        writer.close()
        record.close()


def test_without_the_spec_the_record_still_gives_the_axes_and_inputs(tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(FIXTURE / "run", run)  # the recorded ../spec.yaml is not there
    assert run_cli(str(run)) == (0, TABLE, "")  # nothing is planned again: no spec needed
    data = report.load_run(run)
    bakery = next(t for t in data.tasks if t.variant_id == "bakery-DESIGN-2")
    assert [(i.field, i.kind, Path(i.value).name) for i in bakery.inputs] == [
        ("maskImage", "file", "bakery-mask.png"), ("seedImage", "file", "bakery.png")][::-1]
    assert bakery.prompt == 'Replace the masked sign with a neon sign reading "MIRELLE"'


def test_a_record_made_before_axes_were_recorded_takes_them_from_the_requests(
        tmp_path: Path) -> None:
    """A schema-1 record (tests/fixtures/legacy) is read as it is, never rewritten."""
    db = tmp_path / ".specrunner" / "run.db"
    db.parent.mkdir()
    shutil.copy(FIXTURE.parent / "legacy" / "record-v1.db", db)
    before = db.read_bytes()
    code, text, err = run_cli(str(tmp_path), "--format", "json")
    assert (code, err) == (0, "")
    assert db.read_bytes() == before
    doc = json.loads(text)
    assert doc["run"]["notes"][0] == ("this record predates recorded axes: they come from the "
                                      "requests")
    assert list(doc["breakdown"]) == ["seedImage", "numberResults", "styleType"]
    assert [t["axes"] for t in doc["tasks"][:2]] == [
        {"seedImage": "local:a7b845aba86f", "numberResults": "2", "styleType": "DESIGN"},
        {"seedImage": "local:a7b845aba86f", "numberResults": "-", "styleType": "REALISTIC"}]
    assert doc["tasks"][4]["axes"]["seedImage"] == "https://example.com/remote/seed.jpg"
    assert doc["breakdown"]["styleType"] == [
        {"value": "DESIGN", "tasks": 3, "images": 3, "succeeded": 3, "failed": 0, "pending": 0,
         "in_doubt": 0, "estimated_usd": "0.32", "actual_usd": "0.24"},
        {"value": "REALISTIC", "tasks": 2, "images": 0, "succeeded": 0, "failed": 1,
         "pending": 1, "in_doubt": 0, "estimated_usd": "0.16", "actual_usd": "0.00"}]
    code, text, _ = run_cli(str(tmp_path))
    assert "note: this record predates recorded axes: they come from the requests\n" in text


def test_percentile_is_nearest_rank() -> None:
    assert report.percentile([], 50) is None
    assert report.percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert report.percentile([float(i) for i in range(1, 101)], 95) == 95.0
    assert report.percentile([1.0, 10.0], 95) == 10.0


def test_after_an_edit_and_a_rerun_the_report_counts_the_current_plan(tmp_path: Path) -> None:
    """The tasks an edited prompt replaced are kept in the record (they were paid for) but
    reported apart, as superseded: a 12-task spec reports 12 tasks, not 18."""
    from specrunner.run import set_testing

    set_testing(True)
    try:
        code = cli.run(["init", str(tmp_path / "demo")], io.StringIO(), io.StringIO())
        spec = tmp_path / "demo" / "storefront-local.yaml"
        out = tmp_path / "o"
        assert code == 0 and cli.run(["run", str(spec), "--local", "--out", str(out),
                                      "--progress", "none"], io.StringIO(),
                                     io.StringIO()) == 0
        text = spec.read_text()
        assert "warm pink and teal" in text
        spec.write_text(text.replace("warm pink and teal", "warm pink and blue"))
        assert cli.run(["run", str(spec), "--local", "--out", str(out), "--progress", "none",
                        "--max-usd", "2"], io.StringIO(), io.StringIO()) == 0
    finally:
        set_testing(False)
    doc = json.loads(run_cli(str(out), "--format", "json")[1])
    assert doc["totals"]["tasks"] == 12 and doc["totals"]["succeeded"] == 12
    assert doc["totals"]["actual_usd"] == "0.96" and doc["totals"]["campaign_usd"] == "1.44"
    assert any(n.startswith("6 recorded task(s) belong to earlier plans (superseded)")
               for n in doc["run"]["notes"])
    by_prompt = {g["value"]: g["tasks"] for g in doc["breakdown"]["prompt"]}
    assert by_prompt == {"artdeco": 6, "neon": 6}
