"""Stage 4: a run record -> what reviewers read: tables, JSON, CSV, Markdown, HTML, diffs."""

from specrunner.record import record_path
from specrunner.report.summary import (
    FORMATS,
    RunData,
    Summary,
    TaskInfo,
    from_snapshot,
    load_run,
    percentile,
    render,
    summarize,
)

__all__ = ["FORMATS", "RunData", "Summary", "TaskInfo", "from_snapshot", "load_run",
           "percentile", "record_path", "render", "summarize"]
