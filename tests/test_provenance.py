"""provenance(): git commit, dirty tree, changed and untracked files, lock hash, in real
temporary git repositories (and outside any)."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest

from specrunner import __version__
from specrunner.provenance import provenance


@pytest.fixture(autouse=True)
def isolated_git(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No user or system git config, and no repository above tmp_path."""
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(tmp_path / "no-gitconfig"))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    for name in ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE"):
        monkeypatch.delenv(name, raising=False)


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=Test", "-c", "user.email=test@example.com",
                           "-c", "commit.gpgsign=false", *args], cwd=cwd, check=True,
                          capture_output=True, text=True).stdout


@pytest.fixture()
def repo(tmp_path: Path) -> Path:
    """A repository with one commit: specs/shop.yaml, its lock, an image and a README."""
    root = tmp_path / "repo"
    (root / "specs" / "images").mkdir(parents=True)
    (root / "specs" / "shop.yaml").write_text("version: 1\n")
    (root / "specs" / "shop.lock").write_text("lock-version = 1\n")
    (root / "specs" / "images" / "a.png").write_bytes(b"png")
    (root / "README.md").write_text("hello\n")
    git(root, "init", "-q", "-b", "main")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "campaign")
    return root


def test_clean(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = repo / "specs" / "shop.yaml"
    p = provenance(spec, [repo / "specs" / "images" / "a.png"])
    head = git(repo, "rev-parse", "HEAD").strip()
    lock = hashlib.sha256(b"lock-version = 1\n").hexdigest()
    assert (p.commit, p.dirty, p.changed, p.untracked, p.lock_sha256, p.tool_version, p.note) == (
        head, False, (), (), lock, __version__, None)
    assert p.summary() == f"commit {head[:12]} (clean); lock {lock[:12]}; specrunner {__version__}"
    # untracked files outside the campaign (an output folder, scratch files) do not count
    (repo / "specs" / "out").mkdir()
    (repo / "specs" / "out" / "x.jpg").write_bytes(b"jpg")
    (repo / "notes.txt").write_text("scratch")
    assert provenance(spec).dirty is False
    # a relative spec path, as typed at the repository's root, says the same
    monkeypatch.chdir(repo)
    assert provenance("specs/shop.yaml") == provenance(spec)


def test_dirty_names_every_tracked_file_that_differs(repo: Path) -> None:
    (repo / "README.md").write_text("changed\n")  # modified, not staged
    (repo / "specs" / "new.yaml").write_text("x\n")
    git(repo, "add", "specs/new.yaml")  # staged, never committed
    git(repo, "mv", "specs/images/a.png", "specs/images/b.png")  # a rename: both sides
    (repo / "specs" / "shop.lock").unlink()  # deleted
    p = provenance(repo / "specs" / "shop.yaml")
    assert p.dirty is True and p.lock_sha256 is None
    assert p.changed == ("README.md", "specs/images/a.png", "specs/images/b.png",
                         "specs/new.yaml", "specs/shop.lock")
    assert p.summary().endswith(
        "with uncommitted changes (5 tracked file(s) differ: README.md, specs/images/a.png, "
        "specs/images/b.png, specs/new.yaml, specs/shop.lock); no lock; specrunner "
        f"{__version__}")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "more")
    assert provenance(repo / "specs" / "shop.yaml").dirty is False


def test_untracked_campaign_files_make_it_dirty(repo: Path, tmp_path: Path) -> None:
    (repo / "specs" / "images" / "new-mask.png").write_bytes(b"png")
    outside = tmp_path / "elsewhere.png"
    outside.write_bytes(b"png")
    spec = repo / "specs" / "draft.yaml"
    spec.write_text("version: 1\n")
    p = provenance(spec, [repo / "specs" / "images" / "a.png",
                          repo / "specs" / "images" / "new-mask.png", outside])
    assert (p.dirty, p.changed) == (True, ())
    assert p.untracked == ("specs/draft.yaml", "specs/images/new-mask.png", outside.as_posix())
    assert "untracked: specs/draft.yaml, specs/images/new-mask.png" in p.summary()


def test_a_repository_without_commits(tmp_path: Path) -> None:
    root = tmp_path / "fresh"
    root.mkdir()
    git(root, "init", "-q")
    (root / "shop.yaml").write_text("version: 1\n")
    p = provenance(root / "shop.yaml")
    assert (p.commit, p.dirty, p.untracked, p.note) == (
        None, True, ("shop.yaml",), "the repository has no commit yet")
    assert p.summary().startswith("no git commit (the repository has no commit yet); no lock")


def test_no_git_repository_at_all(tmp_path: Path) -> None:
    (tmp_path / "shop.yaml").write_text("version: 1\n")
    p = provenance(tmp_path / "shop.yaml")
    assert (p.commit, p.dirty, p.changed, p.untracked) == (None, None, (), ())
    assert p.note is not None and "not a git repository" in p.note
    assert p.to_json() == {"commit": None, "dirty": None, "changed": [], "untracked": [],
                           "lock_sha256": None, "tool_version": __version__, "note": p.note}


def test_git_not_installed(repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    p = provenance(repo / "specs" / "shop.yaml")
    assert (p.commit, p.dirty, p.note) == (None, None, "git is not installed")
    assert p.lock_sha256 is not None  # what needs no git is still there
