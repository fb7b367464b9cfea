"""styleReferenceImages: local files are checked like a seed (exists, an image, size caps)
and planned like one ("local:<sha256>" in the request, a LocalImage in Task.local_inputs
keyed by its request path with the list index); URLs and UUIDs are sent as written."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from fixtures.specfiles import BASE_SPEC, write_spec
from PIL import Image

from specrunner.errors import SpecError
from specrunner.plan import build_plan, local_input_path, with_local_inputs
from specrunner.spec import images, load_spec

KEY = "providerSettings.ideogram.styleReferenceImages"
UUID = "6f1c2d3e-4a5b-4c6d-8e9f-0a1b2c3d4e5f"


def spec_with(tmp_path: Path, refs: list[str]) -> Path:
    return write_spec(tmp_path, BASE_SPEC.replace(
        "  outputFormat: PNG\n",
        f"  outputFormat: PNG\n  providerSettings:\n    ideogram:\n"
        f"      styleReferenceImages: {json.dumps(refs)}\n"))


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_local_files_become_placeholders_and_local_inputs(tmp_path: Path) -> None:
    spec = spec_with(tmp_path, ["seed.jpg", "https://example.com/ref.png", UUID, "black.png"])
    plan = build_plan(load_spec(spec))
    task = plan.tasks[0]
    assert task.request["providerSettings"]["ideogram"]["styleReferenceImages"] == [
        f"local:{sha(tmp_path / 'seed.jpg')}", "https://example.com/ref.png", UUID,
        f"local:{sha(tmp_path / 'black.png')}"]
    assert {k: (v.path, v.sha256, v.invert) for k, v in task.local_inputs.items()} == {
        "seedImage": (tmp_path / "seed.png", sha(tmp_path / "seed.png"), False),
        "maskImage": (tmp_path / "mask.png", sha(tmp_path / "mask.png"), False),
        f"{KEY}[0]": (tmp_path / "seed.jpg", sha(tmp_path / "seed.jpg"), False),
        f"{KEY}[3]": (tmp_path / "black.png", sha(tmp_path / "black.png"), False)}
    # every task carries them (the field comes from defaults)
    assert all(set(t.local_inputs) == set(task.local_inputs) for t in plan.tasks)


def test_the_runner_contract_substitutes_every_key_at_its_path(tmp_path: Path) -> None:
    task = build_plan(load_spec(spec_with(tmp_path, ["seed.jpg", UUID, "black.png"]))).tasks[0]
    sent = task.request_with({k: f"uuid-of-{k}" for k in task.local_inputs})
    assert sent["inputs"] == {"seedImage": "uuid-of-seedImage", "maskImage": "uuid-of-maskImage"}
    assert sent["providerSettings"]["ideogram"]["styleReferenceImages"] == [
        f"uuid-of-{KEY}[0]", UUID, f"uuid-of-{KEY}[2]"]
    assert "local:" not in json.dumps(sent)
    assert "local:" in json.dumps(dict(task.request))  # the planned request is untouched


def test_the_reference_bytes_are_part_of_the_task_key(tmp_path: Path) -> None:
    spec = spec_with(tmp_path, ["ref.png"])
    Image.new("RGB", (8, 8), (1, 2, 3)).save(tmp_path / "ref.png")
    before = [t.task_key for t in build_plan(load_spec(spec)).tasks]
    Image.new("RGB", (8, 8), (3, 2, 1)).save(tmp_path / "ref.png")
    after = [t.task_key for t in build_plan(load_spec(spec)).tasks]
    assert len(set(before) | set(after)) == 2 * len(before)


@pytest.mark.parametrize("refs, index, code, fragment, hint", [
    (["seed.png", "sede.jpg"], 1, "image-missing", "sede.jpg: file not found",
     "did you mean `seed.jpg`?"),
    (["notes.png"], 0, "image-invalid", "not an image", None),
    (["anim.gif"], 0, "image-format", "is a GIF image", None),
    (["http://example.com/r.png"], 0, "invalid-url", "only https URLs", None),
    (["data:image/png;base64,AAAA"], 0, "invalid-url", "not data:", None),
    (["images"], 0, "image-not-file", "is not a file", None),
])
def test_reference_images_are_checked_like_a_seed(tmp_path: Path, refs: list[str], index: int,
                                                  code: str, fragment: str,
                                                  hint: str | None) -> None:
    with pytest.raises(SpecError) as info:
        load_spec(spec_with(tmp_path, refs))
    (d,) = info.value.diagnostics
    assert (d.code, d.path) == (code, f"$.defaults.{KEY}[{index}]")
    assert fragment in d.message and (hint is None or d.hint == hint), d
    assert (d.loc.line, d.loc.col) == (8, 30 + sum(len(json.dumps(r)) + 2 for r in refs[:index]))


def test_reference_images_have_the_size_caps(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    spec = spec_with(tmp_path, ["seed.jpg"])
    monkeypatch.setattr(images, "MAX_PIXELS", 100)
    with pytest.raises(SpecError, match="image is 32x24 pixels"):
        load_spec(spec)


def test_no_mask_checks_apply(tmp_path: Path) -> None:
    # all black: an empty mask, a fine style reference; another pixel size than the seed too
    Image.new("L", (40, 40), 0).save(tmp_path / "dark.png")
    assert build_plan(load_spec(spec_with(tmp_path, ["dark.png", "mask-40x24.png"]))).tasks


@pytest.mark.parametrize("key, path", [
    ("seedImage", ("inputs", "seedImage")), ("maskImage", ("inputs", "maskImage")),
    (f"{KEY}[3]", ("providerSettings", "ideogram", "styleReferenceImages", 3)),
])
def test_local_input_paths(key: str, path: tuple) -> None:
    assert local_input_path(key) == path


@pytest.mark.parametrize("key", ["", "a..b", "a[x]", "a[0", ".a"])
def test_a_malformed_key_is_refused(key: str) -> None:
    with pytest.raises(ValueError):
        local_input_path(key)


def test_with_local_inputs_copies_what_it_changes() -> None:
    shared = {"ideogram": {"styleReferenceImages": ["local:a", "local:b"], "styleType": "X"}}
    request = {"providerSettings": shared, "inputs": {"seedImage": "local:s"}}
    sent = with_local_inputs(request, {f"{KEY}[1]": "U", "seedImage": "S"})
    assert sent == {"providerSettings": {"ideogram": {"styleReferenceImages": ["local:a", "U"],
                                                      "styleType": "X"}},
                    "inputs": {"seedImage": "S"}}
    assert shared["ideogram"]["styleReferenceImages"] == ["local:a", "local:b"]
    assert request["inputs"] == {"seedImage": "local:s"}


def test_the_runner_substitutes_as_the_plan_says(tmp_path: Path) -> None:
    from specrunner.run.inputs import substitute

    task = build_plan(load_spec(spec_with(tmp_path, ["seed.jpg", UUID, "black.png"]))).tasks[0]
    values = {k: f"uuid-of-{k}" for k in task.local_inputs}
    assert substitute(task, "the-uuid", values) == {**task.request_with(values),
                                                    "taskUUID": "the-uuid"}


class Recording(httpx.AsyncBaseTransport):
    """The local server in-process, keeping every request body and answer it saw."""

    def __init__(self, app: Any) -> None:
        self.inner = httpx.ASGITransport(app=app)
        self.seen: list[tuple[Any, Any]] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        body = await response.aread()
        if request.method == "POST":
            self.seen.append((json.loads(request.content), json.loads(body)))
        return httpx.Response(response.status_code, headers=response.headers, content=body)


def test_a_local_run_uploads_reference_images_and_sends_their_uuids(tmp_path: Path) -> None:
    from specrunner.local.app import create_app
    from specrunner.run import LOCAL_URL, Runner

    plan = build_plan(load_spec(spec_with(tmp_path, ["seed.jpg", UUID, "black.png"])))
    server = create_app()
    transport = Recording(server)
    result = Runner(plan, out_dir=tmp_path / "out", transport=transport, api_key="k",
                    base_url=LOCAL_URL).run_sync()
    assert result.status == "complete", result
    uploaded: dict[str, str] = {}  # data URI -> imageUUID the server gave it
    sent = []
    for tasks, answer in transport.seen:
        for task in tasks:
            if task["taskType"] == "imageUpload":
                item = next(d for d in answer["data"] if d["taskUUID"] == task["taskUUID"])
                uploaded[task["image"]] = item["imageUUID"]
            elif task["taskType"] == "imageInference":
                sent.append(task)
    by_file = {name: uploaded[next(uri for uri in uploaded if uri.endswith(
        base64.b64encode((tmp_path / name).read_bytes()).decode()))]
        for name in ("seed.jpg", "black.png")}
    assert len(sent) == len(plan.tasks) == 2
    for task in sent:
        assert task["providerSettings"]["ideogram"]["styleReferenceImages"] == [
            by_file["seed.jpg"], UUID, by_file["black.png"]]
    # uploaded once per content: seed, mask and the two references
    assert len(uploaded) == 4
    assert server.stats().requests_by_type["imageUpload"] == 4
