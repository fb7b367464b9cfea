"""The worked examples of running one campaign across machines, tested as far as offline can:
docs/examples/github-actions-shards.yml (GitHub's workflow schema, valid bash, every specrunner
command accepted by the real CLI, and its jobs rehearsed step by step: the shard matrix and
the merge against a local server, artifacts copied as the artifact actions would) and
deploy/k8s/indexed-job.yaml (Kubernetes' schemas, strictly; the Indexed Job's structure; the
shell arithmetic giving shards 1..N; the pods and the final merge rehearsed; the wait for the
shards run against a fake API server)."""

from __future__ import annotations

import copy
import hashlib
import http.server
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from test_run_kill import start_server, stats

from specrunner import cli
from specrunner.record import read_snapshot

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW = ROOT / "docs" / "examples" / "github-actions-shards.yml"
MANIFEST = ROOT / "deploy" / "k8s" / "indexed-job.yaml"
BIN = Path(sys.executable).parent
EXPR = re.compile(r"\$\{\{\s*(.*?)\s*\}\}")


def needs_console_script() -> None:
    if not (BIN / "specrunner").exists():
        pytest.skip("needs the specrunner console script beside the interpreter")


def specrunner_argvs(script: str) -> list[list[str]]:
    """The argv of every `specrunner ...` command of a shell script (continuation lines
    joined), cut at the first shell operator; `exec specrunner` counts too."""
    out = []
    for line in script.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        if words[:1] == ["exec"]:
            words = words[1:]
        if words[:1] != ["specrunner"]:
            continue
        argv = []
        for w in words[1:]:
            if w in ("||", "|", "&&", ";", ">", ">>"):
                break
            argv.append(w)
        out.append(argv)
    return out


def parses(argv: list[str]) -> Any:
    parser, _ = cli.build_parser()
    return parser.parse_args(argv)  # cli._ArgError if the CLI refuses it


def campaign(tmp: Path) -> Path:
    """A checkout holding the example campaign (the spec and its images), as a job sees it."""
    work = tmp / "checkout"
    shutil.copytree(ROOT / "specs" / "examples", work / "specs" / "examples")
    return work


def base_env(url: str, tmp: Path) -> dict[str, str]:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
           "RUNWARE_BASE_URL": f"{url}/v1", "RUNNER_TEMP": str(tmp)}
    env.pop("PYTHONPATH", None)
    return env


def bash(script: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """A `run:` step as GitHub runs it (bash -e -o pipefail), or a pod's `bash -c` script."""
    return subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", script],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=300,
                          check=False)


# == GitHub Actions ===============================================================================

def workflow() -> dict[Any, Any]:
    return yaml.safe_load(WORKFLOW.read_text(encoding="utf-8"))


def expand(text: str, context: dict[str, str]) -> str:
    """Substitute GitHub's ${{ expressions }} from `context`; an unknown one fails the test."""
    def one(m: re.Match[str]) -> str:
        assert m.group(1) in context, f"no value for ${{{{ {m.group(1)} }}}} in the rehearsal"
        return context[m.group(1)]
    return EXPR.sub(one, text)


def shards() -> list[int]:
    return workflow()["jobs"]["shard"]["strategy"]["matrix"]["shard"]


def test_the_workflow_is_valid_for_github(tmp_path: Path) -> None:
    def check(path: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema",
                               "vendor.github-workflows", str(path)], capture_output=True,
                              text=True, timeout=120, check=False)
    done = check(WORKFLOW)
    assert done.returncode == 0, done.stdout + done.stderr
    broken = workflow()
    broken["jobs"]["shard"]["strategy"]["matrix"] = 4  # the check can fail
    (tmp_path / "broken.yml").write_text(yaml.safe_dump(broken))
    assert check(tmp_path / "broken.yml").returncode == 1


def test_the_workflow_shards_uploads_and_merges_as_documented() -> None:
    doc = workflow()
    on = doc.get("on", doc.get(True))  # PyYAML reads the key `on` as true
    assert set(on) == {"workflow_dispatch"}
    shard, merge = doc["jobs"]["shard"], doc["jobs"]["merge"]
    n = len(shards())
    assert shards() == list(range(1, n + 1)) and n >= 2
    assert shard["strategy"]["fail-fast"] is False
    (run,) = [s for s in shard["steps"] if s.get("name") == "Run the shard"]
    assert run["env"] == {"RUNWARE_API_KEY": "${{ secrets.RUNWARE_API_KEY }}"}
    (argv,) = specrunner_argvs(run["run"])
    # N comes from the matrix itself: adding a shard to the list is the whole change
    assert argv[argv.index("--shard") + 1] == "${{ matrix.shard }}/${{ strategy.job-total }}"
    out = argv[argv.index("--out") + 1]
    (upload,) = [s for s in shard["steps"] if s.get("uses") == "actions/upload-artifact@v4"]
    assert upload["with"]["path"] == out and upload["with"]["name"] == "shard-${{ matrix.shard }}"
    assert upload["with"]["include-hidden-files"] is True  # .specrunner/ is hidden
    assert upload["if"] == "success() || failure()"
    caches = [s for s in shard["steps"] if s.get("uses", "").startswith("actions/cache/")]
    assert [c["with"]["path"] for c in caches] == [out, out]
    assert merge["needs"] == "shard" and merge["if"] == "${{ !cancelled() }}"
    (download,) = [s for s in merge["steps"] if s.get("uses") == "actions/download-artifact@v4"]
    assert download["with"] == {"pattern": "shard-*", "path": "shards"}
    scripts = "\n".join(s["run"] for s in merge["steps"] if "run" in s)
    assert "specrunner merge shards/shard-* --out out/merged" in scripts
    assert ('specrunner report out/merged --format markdown >> "$GITHUB_STEP_SUMMARY"'
            in scripts)
    (last,) = [s for s in merge["steps"] if s.get("name") == "Upload the merged folder"]
    assert last["with"]["path"] == "out/merged" and last["with"]["include-hidden-files"]


def test_the_workflow_scripts_are_bash_and_their_commands_parse() -> None:
    seen = set()
    n = len(shards())
    for job, spec in workflow()["jobs"].items():
        for step in spec["steps"]:
            if "run" not in step:
                continue
            for k in shards():
                script = expand(step["run"], {"matrix.shard": str(k),
                                              "strategy.job-total": str(n)})
                done = subprocess.run(["bash", "-n", "-c", script], capture_output=True,
                                      text=True, check=False)
                assert done.returncode == 0, (job, step.get("name"), done.stderr)
                for argv in specrunner_argvs(script):
                    args = parses([workflow()["env"]["SPEC"] if a == "$SPEC" else a
                                   for a in argv])
                    seen.add((job, args.command, getattr(args, "shard", None)))
    assert seen == {("shard", "run", f"{k}/{n}") for k in shards()} | {
        ("merge", "merge", None), ("merge", "report", None)}


def rehearse(job: dict[str, Any], cwd: Path, env: dict[str, str], context: dict[str, str],
             artifacts: Path) -> None:
    """Run a job's steps in `cwd`: `run:` steps with bash; the artifact actions as copies to
    and from `artifacts`; checkout, setup-python, cache and the install step skipped (this
    checkout, this interpreter, no cache)."""
    for step in job["steps"]:
        uses = step.get("uses", "")
        with_ = ({k: expand(str(v), context) for k, v in step["with"].items()}
                 if "artifact" in uses else {})
        if uses.startswith("actions/upload-artifact"):
            shutil.copytree(cwd / with_["path"], artifacts / with_["name"])  # dot files too
        elif uses.startswith("actions/download-artifact"):
            pattern = with_["pattern"]
            for art in sorted(artifacts.glob(pattern)):
                shutil.copytree(art, cwd / with_["path"] / art.name)
        elif "run" in step and "pip install" not in step["run"]:
            step_env = {**env, **{k: expand(str(v), context)
                                  for k, v in step.get("env", {}).items()}}
            done = bash(expand(step["run"], context), cwd, step_env)
            assert done.returncode == 0, (step.get("name"), done.stdout, done.stderr)


def test_the_workflow_runs_its_shards_then_merges_them(tmp_path: Path) -> None:
    """The shard job once per matrix value, then the merge job in a fresh checkout, against a
    local server: every task billed once and the report posted to the summary complete."""
    needs_console_script()
    doc = workflow()
    n = len(shards())
    artifacts, summary = tmp_path / "artifacts", tmp_path / "summary.md"
    server, url = start_server()
    try:
        env = {**base_env(url, tmp_path), "GITHUB_STEP_SUMMARY": str(summary),
               **{k: str(v) for k, v in doc["env"].items()}}
        for k in shards():
            (tmp_path / f"runner-{k}").mkdir()
            work = campaign(tmp_path / f"runner-{k}")
            rehearse(doc["jobs"]["shard"], work, env,
                     {"matrix.shard": str(k), "strategy.job-total": str(n),
                      "secrets.RUNWARE_API_KEY": os.environ["RUNWARE_API_KEY"]}, artifacts)
            assert read_snapshot(artifacts / f"shard-{k}").runs[0].shard == f"{k}/{n}"
        (tmp_path / "runner-merge").mkdir()
        work = campaign(tmp_path / "runner-merge")
        rehearse(doc["jobs"]["merge"], work, env, {}, artifacts)
        ledger = stats(url)
    finally:
        server.terminate()
        server.wait(timeout=10)
    assert ledger["tasksCharged"] == 12 and ledger["duplicateAttemptsTotal"] == 0
    text = summary.read_text()
    assert text.startswith("## run storefront-local: complete, 4 run(s)")
    assert re.search(r"^\| succeeded +\| 12 +\|$", text, re.M), text
    merged = work / "out" / "merged"
    snap = read_snapshot(merged)
    assert len(snap.tasks) == 12 and {t.state for t in snap.tasks} == {"done"}
    assert (merged / "report" / "index.html").is_file()
    images = [r for rs in snap.results.values() for r in rs]
    assert len(images) == 12 and all(
        hashlib.sha256((merged / r.output_path).read_bytes()).hexdigest() == r.sha256
        for r in images if r.output_path)


# == Kubernetes ===================================================================================

def manifests() -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(MANIFEST.read_text(encoding="utf-8")) if d]


def named(kind: str, name: str) -> dict[str, Any]:
    (doc,) = [d for d in manifests() if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


def test_the_manifest_is_valid_for_kubernetes() -> None:
    for version in ("1.29.0", "1.37.0"):  # backoffLimitPerIndex and FailIndex: 1.29 on
        for doc in manifests():
            kubernetes_validate.validate(doc, version, strict=True)
    broken = copy.deepcopy(named("Job", "specrunner-shards"))
    broken["spec"]["completionMod"] = "Indexed"  # the check can fail
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, "1.37.0", strict=True)


def shard_job() -> tuple[dict[str, Any], dict[str, Any], str, int]:
    job = named("Job", "specrunner-shards")
    (pod,) = job["spec"]["template"]["spec"]["containers"]
    return job, pod, pod["args"][0], job["spec"]["completions"]


def test_the_indexed_job_is_one_pod_per_shard_on_a_shared_volume() -> None:
    job, pod, script, n = shard_job()
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed" and n == spec["parallelism"] >= 2
    assert pod["command"] == ["bash", "-c"]
    assert "k=$((JOB_COMPLETION_INDEX + 1))" in script
    (argv,) = specrunner_argvs(script)
    assert argv[argv.index("--shard") + 1] == f"$k/{n}"  # N is `completions`
    out = argv[argv.index("--out") + 1]
    # retried pods resume; a bad spec (2) or the budget (3) fails the index at once
    (rule,) = spec["podFailurePolicy"]["rules"]
    assert rule["action"] == "FailIndex" and rule["onExitCodes"] == {
        "containerName": pod["name"], "operator": "In", "values": [2, 3]}
    assert spec["template"]["spec"]["restartPolicy"] == "Never"
    assert {e["name"]: e.get("valueFrom") for e in pod["env"]}["RUNWARE_API_KEY"] == {
        "secretKeyRef": {"name": "runware", "key": "api-key"}}
    # the shards and the merge see one volume, at one path, holding every shard's --out
    claim = named("PersistentVolumeClaim", "specrunner-data")
    assert "ReadWriteMany" in claim["spec"]["accessModes"]
    merge = named("Job", "specrunner-merge")["spec"]["template"]["spec"]
    for pod_spec, container in ((spec["template"]["spec"], pod),
                                (merge, merge["containers"][0])):
        (vol,) = pod_spec["volumes"]
        assert vol["persistentVolumeClaim"]["claimName"] == "specrunner-data"
        (mount,) = container["volumeMounts"]
        assert mount == {"name": vol["name"], "mountPath": "/data"}
    assert out.startswith("/data/")
    merge_argvs = specrunner_argvs(merge["containers"][0]["args"][0])
    assert merge_argvs[0] == ["merge", "/data/out/shard-*", "--out", "/data/out/merged"]
    assert out == "/data/out/shard-$k"
    # the merge waits for the shards' Job with the right to read that one Job only
    sa = merge["serviceAccountName"]
    (rule,) = named("Role", sa)["rules"]
    assert rule == {"apiGroups": ["batch"], "resources": ["jobs"],
                    "resourceNames": ["specrunner-shards"], "verbs": ["get"]}
    binding = named("RoleBinding", sa)
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa}]
    assert binding["roleRef"]["name"] == sa


def test_each_index_runs_its_own_shard_from_1_to_n(tmp_path: Path) -> None:
    """The pod's script run by bash for every JOB_COMPLETION_INDEX, with a `specrunner` that
    prints its arguments: shards 1/N..N/N, each to its own folder, each accepted by the CLI."""
    _, _pod, script, n = shard_job()
    stub = tmp_path / "bin" / "specrunner"
    stub.parent.mkdir()
    stub.write_text('#!/bin/sh\nprintf "%s\\n" "$@"\n')
    stub.chmod(0o755)
    env = {"PATH": f"{stub.parent}{os.pathsep}{os.environ['PATH']}", "SPEC": "/specs/x.yaml"}
    seen = []
    for index in range(n):
        done = bash(script, tmp_path, {**env, "JOB_COMPLETION_INDEX": str(index)})
        assert done.returncode == 0, done.stderr
        argv = done.stdout.splitlines()
        args = parses(argv)
        seen.append((args.shard, args.out))
    assert seen == [(f"{k}/{n}", f"/data/out/shard-{k}") for k in range(1, n + 1)]
    assert bash(script, tmp_path, env).returncode != 0  # no index: set -u stops it


def test_the_pods_and_the_merge_run_against_a_local_server(tmp_path: Path) -> None:
    """Every pod of the Indexed Job at once (the volume and the image's /specs are folders
    here), then the merge container: each task billed once, the report complete."""
    needs_console_script()
    _, pod, script, n = shard_job()
    data, specs = tmp_path / "data", campaign(tmp_path) / "specs"
    spec = {e["name"]: e.get("value") for e in pod["env"]}["SPEC"]
    local = lambda s: s.replace("/data/", f"{data}/").replace("/specs/", f"{specs}/")  # noqa
    server, url = start_server()
    try:
        env = {**base_env(url, tmp_path), "SPEC": local(spec)}
        pods = [subprocess.Popen(["bash", "-c", local(script)], cwd=tmp_path,
                                 env={**env, "JOB_COMPLETION_INDEX": str(i)},
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                for i in range(n)]
        for p in pods:
            _, err = p.communicate(timeout=300)
            assert p.returncode == 0, err
        merge = named("Job", "specrunner-merge")["spec"]["template"]["spec"]["containers"][0]
        done = bash(local(merge["args"][0]), tmp_path, env)
        ledger = stats(url)
    finally:
        server.terminate()
        server.wait(timeout=10)
    assert done.returncode == 0, done.stderr
    assert ledger["tasksCharged"] == 12 and ledger["duplicateAttemptsTotal"] == 0
    assert "## run storefront-local: complete" in done.stdout
    snap = read_snapshot(data / "out" / "merged")
    assert sorted(r.shard for r in snap.runs) == [f"{k}/{n}" for k in range(1, n + 1)]
    assert len(snap.tasks) == 12 and {t.state for t in snap.tasks} == {"done"}


def test_the_merge_waits_until_the_shards_job_has_finished(tmp_path: Path) -> None:
    """The wait-for-shards script against a fake API server (plain HTTP on 127.0.0.1, the
    service account files in a folder): it asks with the pod's token until the Job has a
    Complete or Failed condition, then ends."""
    init = named("Job", "specrunner-merge")["spec"]["template"]["spec"]["initContainers"][0]
    assert init["command"] == ["python", "-c"]
    code = init["args"][0]
    answers = [{"status": {"active": 4}},
               {"status": {"conditions": [{"type": "Suspended", "status": "False"}]}},
               {"status": {"conditions": [{"type": "Failed", "status": "True"}]}}]
    asked: list[tuple[str, str | None]] = []

    class Api(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            asked.append((self.path, self.headers.get("Authorization")))
            body = json.dumps(answers[min(len(asked), len(answers)) - 1]).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    api = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Api)
    threading.Thread(target=api.serve_forever, daemon=True).start()
    sa = tmp_path / "sa"
    sa.mkdir()
    (sa / "namespace").write_text("campaigns")
    (sa / "token").write_text("pod-token\n")
    ca = Path("/etc/ssl/certs/ca-certificates.crt")
    if not ca.is_file():
        pytest.skip("needs a CA bundle to stand in for the service account's ca.crt")
    shutil.copyfile(ca, sa / "ca.crt")
    assert code.count("https://kubernetes.default.svc") == 1 and "time.sleep(15)" in code
    fake = (code.replace("/var/run/secrets/kubernetes.io/serviceaccount", str(sa))
            .replace("https://kubernetes.default.svc", f"http://127.0.0.1:{api.server_port}")
            .replace("time.sleep(15)", "time.sleep(0.01)"))
    try:
        done = subprocess.run([sys.executable, "-c", fake], capture_output=True, text=True,
                              timeout=60, check=False)
    finally:
        api.shutdown()
    assert done.returncode == 0, done.stderr
    assert done.stdout == "shards: Failed\n"
    assert asked == [("/apis/batch/v1/namespaces/campaigns/jobs/specrunner-shards",
                      "Bearer pod-token")] * 3


# == README =======================================================================================

def test_the_readme_section_runs_as_written(tmp_path: Path) -> None:
    """The "Across machines" commands, run by bash in a copy of the checkout; the output shown
    there is what they print (paths elided as `...`)."""
    needs_console_script()
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Across machines\n", 1)[1].split("\n## ", 1)[0]
    script, shown = re.findall(r"```(?:sh)?\n(.*?)```", section, re.S)[:2]
    work = campaign(tmp_path)
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("PYTHONPATH", None)
    outputs: dict[str, str] = {}
    prelude = ""
    for line in script.splitlines():
        done = bash(prelude + line, work, env)
        assert done.returncode == 0, (line, done.stderr)
        outputs[line.split("  #")[0].strip()] = done.stdout
        if re.match(r"^\w+=\S+$", line):  # a variable the next lines use
            prelude += line + "\n"
    for block in shown.split("$ ")[1:]:
        command, *lines = block.rstrip("\n").split("\n")
        got = outputs[command.replace("specs/examples/storefront-local.yaml", "$S")].splitlines()
        for want, have in zip(lines, got, strict=False):
            if want == "...":
                break
            assert re.fullmatch(re.escape(want).replace(r"\.\.\.", ".*"), have), (want, have)
