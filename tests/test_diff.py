"""`specrunner diff`: the fixture run against an edited copy of itself (every kind of change)."""

from __future__ import annotations

import io
import json
import shutil
import sqlite3
from pathlib import Path

import pytest

from specrunner import cli

FIXTURE = Path(__file__).parent / "fixtures" / "run_fixture"

# Run B: diner-DESIGN produced another image, remote-DESIGN sent another request (another
# prompt and seed image, and cost more), bakery-REALISTIC succeeded this time,
# diner-REALISTIC is gone and the spec dropped its exclude, so remote-REALISTIC was added
# (and failed).
EDITS = """
UPDATE results SET sha256='00'||substr(sha256,3) WHERE output_path='diner-DESIGN.png';
UPDATE tasks SET task_key='k-remote-2', cost='0.09',
  request_json=replace(replace(request_json, 'neon sign', 'chalk sign'), 'remote/seed.jpg',
                       'remote/seed-2.jpg') WHERE variant_id='remote-DESIGN';
UPDATE results SET task_key='k-remote-2', cost='0.09' WHERE output_path='remote-DESIGN.png';
DELETE FROM tasks WHERE variant_id='diner-REALISTIC';
UPDATE tasks SET state='done', cost='0.08', error_code=NULL, error_message=NULL
  WHERE variant_id='bakery-REALISTIC';
INSERT INTO results (task_key, idx, task_uuid, cost, output_path, sha256, bytes, received_at)
  SELECT task_key, 0, task_uuid, '0.08', 'bakery-REALISTIC.png', 'ab', 10, 1767225700
  FROM tasks WHERE variant_id='bakery-REALISTIC';
INSERT INTO tasks (task_key, idx, variant_id, state, generation, task_uuid, est_cost,
                   request_json, outputs_json, updated_at, error_code, error_message,
                   axes_json, input_name, prompt_name, inputs_json)
  SELECT 'k-new', 5, 'remote-REALISTIC', 'failed', 0, task_uuid, '0.08',
         replace(request_json, 'DESIGN', 'REALISTIC'), '[]', 1767225700, 'timeoutProvider',
         'provider timed out', replace(axes_json, 'DESIGN', 'REALISTIC'), input_name,
         prompt_name, inputs_json FROM tasks WHERE variant_id='remote-DESIGN';
"""


@pytest.fixture()
def runs(tmp_path: Path) -> tuple[Path, Path]:
    a, b = tmp_path / "a", tmp_path / "b"
    for dest in (a, b):
        shutil.copytree(FIXTURE, dest, ignore=shutil.ignore_patterns("expected", "__pycache__"))
    spec = b / "spec.yaml"
    spec.write_text(spec.read_text().replace(
        "  exclude:\n    - {input: remote, styleType: REALISTIC}\n", ""))
    with sqlite3.connect(b / "run" / ".specrunner" / "run.db") as conn:
        conn.executescript(EDITS)
    return a / "run", b / "run"


def diff(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = cli.run(["diff", *argv], out, err)
    return code, out.getvalue(), err.getvalue()


TABLE = """\
diff report-fixture (interrupted, 5 tasks) -> report-fixture (interrupted, 5 tasks): 1 added, \
1 removed, 3 changed, 1 unchanged

total               A     B    delta
---------------  ----  ----  -------
tasks               5     5        0
images              3     4       +1
succeeded           3     4       +1
failed              1     1        0
estimated (USD)  0.48  0.48     0.00
actual (USD)     0.24  0.33    +0.09

variants

variant           change                                     status          USD
----------------  -----------------------------------------  --------------  ------------
remote-REALISTIC  added
diner-REALISTIC   removed
bakery-REALISTIC  status                                     failed -> done  0.00 -> 0.08
diner-DESIGN      outputs                                    done -> done    0.08 -> 0.08
remote-DESIGN     request: inputs.seedImage, positivePrompt  done -> done    0.08 -> 0.09

by input

input      tasks    failed    delta    actual USD    delta
-------  -------  --------  -------  ------------  -------
bakery    2 -> 2    1 -> 0       -1  0.08 -> 0.16    +0.08
diner     2 -> 1    0 -> 0        0  0.08 -> 0.08     0.00
remote    1 -> 2    0 -> 1       +1  0.08 -> 0.09    +0.01

by styleType

styleType      tasks    failed    delta    actual USD    delta
-----------  -------  --------  -------  ------------  -------
DESIGN        3 -> 3    0 -> 0        0  0.24 -> 0.25    +0.01
REALISTIC     2 -> 2    1 -> 1        0  0.00 -> 0.08    +0.08

by numberResults

numberResults      tasks    failed    delta    actual USD    delta
---------------  -------  --------  -------  ------------  -------
2                 1 -> 1    0 -> 0        0  0.08 -> 0.08     0.00
-                 4 -> 4    1 -> 1        0  0.16 -> 0.25    +0.09
"""


def test_diff_table_exact(runs: tuple[Path, Path]) -> None:
    assert diff(str(runs[0]), str(runs[1])) == (0, TABLE, "")


def test_diff_json_shape(runs: tuple[Path, Path]) -> None:
    code, text, err = diff(str(runs[0].parent / "spec.yaml"), str(runs[1]), "--format",
                           "json", "--by", "styleType")
    assert (code, err) == (0, "")
    doc = json.loads(text)
    assert (doc["added"], doc["removed"], doc["unchanged"]) == (
        ["remote-REALISTIC"], ["diner-REALISTIC"], 1)
    assert doc["changed"] == [
        {"variant": "bakery-REALISTIC", "request_changed": False, "request_fields": [],
         "outputs_changed": False, "status": ["failed", "done"],
         "actual_usd": ["0.00", "0.08"]},
        {"variant": "diner-DESIGN", "request_changed": False, "request_fields": [],
         "outputs_changed": True, "status": ["done", "done"], "actual_usd": ["0.08", "0.08"]},
        {"variant": "remote-DESIGN", "request_changed": True,
         "request_fields": ["inputs.seedImage", "positivePrompt"], "outputs_changed": False,
         "status": ["done", "done"], "actual_usd": ["0.08", "0.09"]}]
    assert doc["totals"]["actual_usd"] == ["0.24", "0.33", "0.09"]
    assert doc["totals"]["failed"] == [1, 1, 0]
    assert doc["by_axis"] == {"styleType": [
        {"value": "DESIGN", "tasks": [3, 3], "failed": [0, 0, 0],
         "actual_usd": ["0.24", "0.25", "0.01"]},
        {"value": "REALISTIC", "tasks": [2, 2], "failed": [1, 1, 0],
         "actual_usd": ["0.00", "0.08", "0.08"]}]}


def test_diff_markdown_and_identical_runs(runs: tuple[Path, Path]) -> None:
    code, text, _ = diff(str(runs[0]), str(runs[0]), "--format", "markdown")
    assert code == 0
    assert text.splitlines()[0] == ("## diff report-fixture (interrupted, 5 tasks) -> "
                                    "report-fixture (interrupted, 5 tasks): 0 added, "
                                    "0 removed, 0 changed, 5 unchanged")
    assert "### variants" not in text and "| tasks           |    5 |    5 |       0 |" in text


def test_diff_errors_exit_2(runs: tuple[Path, Path], tmp_path: Path) -> None:
    code, text, err = diff(str(runs[0]), str(tmp_path))
    assert (code, text) == (2, "") and err.startswith("error: no run record in ")
    code, _, err = diff(str(runs[0]), str(runs[1]), "--by", "colour")
    assert code == 2 and err.startswith("error: unknown axis 'colour'")
