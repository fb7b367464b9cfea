"""`specrunner export`: exactly the chosen review states, a manifest, never overwriting."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import pytest
from PIL import Image

from specrunner import cli
from specrunner.report import review
from specrunner.report.review import Decision

FIXTURE = Path(__file__).parent / "fixtures" / "run_fixture"
SHA = {"bakery-DESIGN-2": "8cec3279e3ed3f66754af5081623825394f8541ba8351a7c111585e45077e842",
       "diner-DESIGN": "62e861a97d4df36c38ac5a94de0d066a83788091a1f40f9d551cee43a44e995e",
       "remote-DESIGN": "eadedd947c7a3ab7f3e3af92b1b6e20a4702137a7e4233ee3967b6b462070b70"}
HEADER = ("variant,image_index,file,input,prompt,styleType,numberResults,prompt_text,cost_usd,"
          "seed,sha256,verdict,note\n")
PROMPT = 'Replace the masked sign with a neon sign reading ""{}""'


@pytest.fixture()
def fx(tmp_path: Path) -> Path:
    dest = tmp_path / "fx"
    shutil.copytree(FIXTURE, dest, ignore=shutil.ignore_patterns("expected", "__pycache__"))
    review.save(dest / "spec.review.yaml", [
        Decision("bakery-DESIGN-2", 0, SHA["bakery-DESIGN-2"], "approved", "the one, really"),
        Decision("diner-DESIGN", 0, SHA["diner-DESIGN"], "rejected", "too dark"),
        Decision("remote-DESIGN", 0, "0" * 64, "approved")])  # stale: other bytes
    return dest


def export(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = cli.run(["export", *argv], out, err)
    return code, out.getvalue(), err.getvalue()


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def test_default_is_exactly_the_approved_images_with_a_manifest(fx: Path, tmp_path: Path) -> None:
    dest = tmp_path / "out"
    code, out, err = export(str(fx / "run"), str(dest))
    assert (code, err) == (0, "")
    assert out == (f"exported 1 approved image(s) to {dest} (1 copied, 0 already there); "
                   f"manifest: {dest / 'manifest.csv'}; decisions: {fx / 'spec.review.yaml'}\n")
    got = files(dest)
    assert sorted(got) == ["bakery-DESIGN-1.png", "manifest.csv"]
    assert got["bakery-DESIGN-1.png"] == (fx / "run" / "bakery-DESIGN-1.png").read_bytes()
    assert got["manifest.csv"].decode() == HEADER + (
        f'bakery-DESIGN-2,0,bakery-DESIGN-1.png,bakery,neon,DESIGN,2,"{PROMPT.format("MIRELLE")}",'
        f'0.08,8445862697981787208,{SHA["bakery-DESIGN-2"]},approved,"the one, really"\n')


def test_states_are_chosen_by_flags(fx: Path, tmp_path: Path) -> None:
    dest = tmp_path / "out"
    code, out, _ = export(str(fx / "spec.yaml"), str(dest), "--rejected", "--stale")
    assert code == 0 and "exported 2 rejected/stale image(s)" in out
    assert sorted(files(dest)) == ["diner-DESIGN.png", "manifest.csv", "remote-DESIGN.png"]
    rows = (dest / "manifest.csv").read_text().splitlines()[1:]
    assert [r.split(",")[0] for r in rows] == ["diner-DESIGN", "remote-DESIGN"]
    assert rows[0].endswith(f"{SHA['diner-DESIGN']},rejected,too dark")
    assert rows[1].endswith(f"{SHA['remote-DESIGN']},stale,")  # a stale note is not carried
    code, out, _ = export(str(fx / "run"), str(tmp_path / "none"), "--pending")
    assert code == 0 and "exported 0 pending image(s)" in out
    assert files(tmp_path / "none") == {"manifest.csv": HEADER.encode()}


def test_again_is_harmless_and_different_files_are_never_overwritten(
        fx: Path, tmp_path: Path) -> None:
    dest = tmp_path / "out"
    assert export(str(fx / "run"), str(dest), "--approved", "--rejected")[0] == 0
    before = files(dest)
    code, out, _ = export(str(fx / "run"), str(dest), "--approved", "--rejected")
    assert code == 0 and "(0 copied, 2 already there)" in out
    assert files(dest) == before
    # someone's own file where an image would go: refused, nothing written at all
    (dest / "diner-DESIGN.png").write_bytes(b"my edit")
    shutil.copy(fx / "run" / "remote-DESIGN.png", tmp_path / "keep.png")
    review.update(fx / "spec.review.yaml", ("remote-DESIGN", 0),
                  Decision("remote-DESIGN", 0, SHA["remote-DESIGN"], "approved"),
                  Decision("remote-DESIGN", 0, "0" * 64, "approved"))
    snapshot = files(dest)
    code, out, err = export(str(fx / "run"), str(dest), "--approved", "--rejected")
    assert (code, out) == (2, "")
    assert err == (f"error: refusing to overwrite: {dest / 'diner-DESIGN.png'} exists with "
                   f"other bytes; {dest / 'manifest.csv'} differs (another selection, or "
                   "decisions changed since); nothing was written (export to a new folder, "
                   "or remove them)\n")
    assert files(dest) == snapshot  # remote-DESIGN.png was not copied either


def test_a_changed_image_is_stale_so_not_exported_as_approved(fx: Path, tmp_path: Path) -> None:
    Image.new("RGB", (192, 128), (1, 2, 3)).save(fx / "run" / "bakery-DESIGN-1.png")
    code, out, _ = export(str(fx / "run"), str(tmp_path / "out"))
    assert code == 0 and "exported 0 approved image(s)" in out
    assert sorted(files(tmp_path / "out")) == ["manifest.csv"]


def test_dest_that_is_a_file_exits_2(fx: Path, tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("x")
    code, _, err = export(str(fx / "run"), str(tmp_path / "a-file"))
    assert code == 2 and err == f"error: {tmp_path / 'a-file'} exists and is not a folder\n"


def test_a_run_whose_spec_is_gone_uses_the_review_file_where_the_spec_was(
        fx: Path, tmp_path: Path) -> None:
    run = tmp_path / "copy" / "run"
    shutil.copytree(fx / "run", run)  # records ../spec.yaml, which is not beside it
    code, out, err = export(str(run), str(tmp_path / "out"))
    assert (code, err) == (0, "")
    assert out.endswith(f"decisions: {tmp_path / 'copy' / 'spec.review.yaml'}\n")
    assert "exported 0 approved image(s)" in out
    shutil.copy(fx / "spec.review.yaml", tmp_path / "copy" / "spec.review.yaml")
    code, out, _ = export(str(run), str(tmp_path / "out2"))
    assert code == 0 and "exported 1 approved image(s)" in out


def test_spec_option_points_at_the_review_file(fx: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "checkout"
    elsewhere.mkdir()
    shutil.copy(fx / "spec.yaml", elsewhere / "spec.yaml")
    shutil.copytree(fx / "images", elsewhere / "images")
    review.save(elsewhere / "spec.review.yaml", [
        Decision("diner-DESIGN", 0, SHA["diner-DESIGN"], "approved")])
    dest = tmp_path / "out"
    code, _out, err = export(str(fx / "run"), str(dest), "--spec", str(elsewhere / "spec.yaml"))
    assert (code, err) == (0, "")
    assert sorted(files(dest)) == ["diner-DESIGN.png", "manifest.csv"]
    code, _, err = export(str(fx / "run"), str(dest), "--spec", str(tmp_path / "nope.yaml"))
    assert code == 2 and err == f"error: --spec {tmp_path / 'nope.yaml'}: no such file\n"
