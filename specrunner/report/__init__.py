"""Stage 4: a run record -> what reviewers read: tables, JSON, CSV, Markdown, HTML, diffs."""

from specrunner.report.summary import (
    FORMATS, RunData, Summary, TaskInfo, connect_ro, load_run, percentile, record_path, render,
    summarize,
)

__all__ = ["FORMATS", "RunData", "Summary", "TaskInfo", "connect_ro", "load_run",
           "percentile", "record_path", "render", "summarize"]
