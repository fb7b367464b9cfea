"""`specrunner merge DIR... --out DIR`: join run folders of one campaign into one folder.

The folders are usually the shards of one campaign (`run --shard K/N`), run on several
machines; any run folders of one spec will do. The merged folder holds one record (every run
with its shard, every UUID, attempt and result) and every image, so `report`, `diff`, `plan
--out` and `run` work on it as on a folder one machine ran: running the spec there sends only
what no folder finished. Merging again adds only what is new.

Folders are one campaign when their latest runs planned the same tasks (the same task keys:
comments, budget or concurrency may differ; a prompt, a setting or an input file may not).
Exit codes: 0 merged (or nothing new to merge), 2 folders of different campaigns, a missing,
damaged or busy record, or bad arguments.
"""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path
from typing import TextIO

from specrunner.errors import EXIT_OK


def configure(parser: argparse.ArgumentParser) -> None:
    """Declare the options of `merge`."""
    parser.add_argument("folders", metavar="DIR", nargs="+",
                        help="run folders to join: the shards of one campaign, or any run "
                             "folders of one spec")
    parser.add_argument("--out", metavar="DIR", required=True,
                        help="the merged folder (made if missing; merging into it again adds "
                             "only what is new)")


def execute(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """Merge, say what was merged and what is missing; return the exit code."""
    from specrunner.money import money
    from specrunner.record import merge_records

    r = merge_records(Path(args.out), [Path(f) for f in args.folders])
    dest = shlex.quote(str(r.dest))
    n = len(r.sources)
    if r.changed:
        print(f"merged {n} folder(s) into {r.dest}: {r.runs_added:,} run(s), "
              f"{r.tasks_added:,} task(s) added, {r.tasks_replaced:,} replaced by a copy "
              f"further along, {r.files_copied:,} image(s) copied ({r.bytes_copied:,} bytes)",
              file=out)
    else:
        print(f"nothing new: {r.dest} already holds everything in these {n} folder(s)",
              file=out)
    print(f"shards: {', '.join('the whole plan' if s == 'whole' else s for s in r.shards)}",
          file=out)
    print(f"plan: {r.recorded:,} of {r.planned:,} tasks recorded, {r.done:,} done", file=out)
    dup = []
    if r.done_twice:
        dup.append(f"{r.done_twice:,} tasks done in more than one of these folders (one copy "
                   "kept)")
    if r.billed_again:
        dup.append(f"{r.billed_again:,} done under more than one taskUUID, each billed: "
                   f"{money(r.duplicate_cost)} paid twice")
    elif r.done_twice:
        dup.append("each under one taskUUID, so billed once")
    print(f"duplicates: {'; '.join(dup) or 'none'}", file=out)
    rerun = (f"`specrunner run {shlex.quote(r.spec_path)} --out {dest}`" if r.spec_path
             else f"`specrunner run SPEC --out {dest}`")
    if r.missing_shards:
        print(f"warning: no folder ran shard {', '.join(r.missing_shards)}: its tasks are not in "
              f"the merged record; run the shard and merge again, or run them there with "
              f"{rerun}", file=err)
    elif r.recorded < r.planned:
        print(f"warning: {r.planned - r.recorded:,} tasks of the plan are in no folder; {rerun} "
              "runs them", file=err)
    if r.refetch:
        shown = ", ".join(r.refetch[:5]) + (", ..." if len(r.refetch) > 5 else "")
        print(f"warning: {len(r.refetch):,} done tasks had no intact image in any folder "
              f"({shown}): merged as received; {rerun} fetches them again (not paid again)",
              file=err)
    if r.done < r.recorded:
        print(f"{r.recorded - r.done:,} recorded tasks are not done (failed, in doubt or "
              f"pending): {rerun} finishes them; tasks in doubt are asked about first, done "
              "ones are skipped", file=err)
    print(f"report: specrunner report {dest}", file=out)
    return EXIT_OK
