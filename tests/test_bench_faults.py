"""bench/bench_faults.py's canary sweep finds the key where it is: a clean campaign sweeps to 0,
a key (or its first 16 characters) planted in any file under the output folder is counted."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from specrunner.local import LocalConfig, create_app
from specrunner.plan import build_plan
from specrunner.run import Runner
from specrunner.spec import load_spec

BENCH = Path(__file__).resolve().parent.parent / "bench" / "bench_faults.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_faults", BENCH)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_faults"] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_sweep_counts_a_planted_key_and_nothing_else(tmp_path: Path) -> None:
    bench = load_bench()
    spec = bench.write_campaign(tmp_path, tasks=4, images=1, concurrency=2)
    out = tmp_path / "out"
    result = Runner(build_plan(load_spec(spec)), out_dir=out, local=create_app(
        LocalConfig(render=False)), api_key=bench.KEY).run_sync()
    assert result.status == "complete"
    clean = bench.sweep(out)
    assert (clean.in_files, clean.clipped_in_files, clean.in_reports) == (0, 0, 0)
    assert clean.files >= 5 and (out / "report" / "index.html").is_file()  # html swept too

    (out / ".specrunner" / "note.txt").write_text(f"Authorization: Bearer {bench.KEY}")
    (out / "clipped.log").write_bytes(b"quoted: " + bench.KEY[:20].encode())
    planted = bench.sweep(out)
    assert planted.in_files == 1
    assert planted.clipped_in_files == 2  # the whole key holds its first 16 characters too
