"""bench/bench_kill.py's crash points land where its report says they do: a `specrunner run`
armed at the first output-file write dies by SIGKILL with half a file under a temporary
name, armed at the first rename with the whole file there, and a resume completes."""

from __future__ import annotations

import hashlib
import io
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from test_run_cli import write_spec

from specrunner.record import read_snapshot

ROOT = Path(__file__).resolve().parent.parent
BENCH_KILL = ROOT / "bench" / "bench_kill.py"


def run(spec: Path, out: Path, *crash: str) -> subprocess.CompletedProcess[str]:
    args = ["run", str(spec), "--local", "--out", str(out), "--progress", "none",
            "--concurrency", "1"]
    cmd = ([sys.executable, str(BENCH_KILL), "--child", *crash, "-", "--", *args] if crash
           else [sys.executable, "-m", "specrunner", *args])
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


@pytest.mark.skipif(sys.platform != "linux", reason="the crash points read /proc/self/fd")
@pytest.mark.parametrize("point", ["write", "rename"])
def test_crash_point_kills_at_the_file_it_names_then_resume_completes(
        tmp_path: Path, point: str) -> None:
    spec = write_spec(tmp_path, repeat=1)
    out = tmp_path / "o"
    died = run(spec, out, point, "1")
    assert died.returncode == -signal.SIGKILL, died.stderr
    [tmp] = list(out.rglob(".*.tmp"))
    final = tmp.with_name(tmp.name.removeprefix(".").removesuffix(".tmp"))
    assert not final.exists()
    assert not any(t.state == "done" for t in read_snapshot(out).tasks)
    data = tmp.read_bytes()
    if point == "write":  # half the image: not one PIL can read
        with pytest.raises(OSError):
            Image.open(io.BytesIO(data)).load()
    else:  # the whole image, fsynced, not yet renamed
        Image.open(io.BytesIO(data)).load()

    resumed = run(spec, out)
    assert resumed.returncode == 0, resumed.stderr
    snap = read_snapshot(out)
    assert {t.state for t in snap.tasks} == {"done"}
    for results in snap.results.values():
        for r in results:
            assert r.output_path
            body = (out / r.output_path).read_bytes()
            assert hashlib.sha256(body).hexdigest() == r.sha256
    assert not list(out.rglob(".*.tmp"))  # the resume wrote over the crash's temporary file
