"""The example campaign `specrunner init DIR` writes, taken from the installed package.

A checkout reads specs/examples/ (what the repository shows); a wheel carries the same files
as specrunner/_examples (see pyproject.toml), so `init` works from a plain `pip install`.
`files(dest)` says what would be written; `write(dest)` writes it, refusing to replace a file
that differs (nothing is written then). The spec is the repository's example with its
paths made relative to DEST: the editor schema line points at a copy of spec.schema.json
written beside it, and the output folder is DEST/out/<name>.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from specrunner import models
from specrunner.errors import UsageError

_CHECKOUT = Path(__file__).resolve().parent.parent / "specs" / "examples"
EXAMPLES_DIR = (_CHECKOUT if (_CHECKOUT / "storefront-local.yaml").is_file()
                else Path(__file__).resolve().parent / "_examples")
SPEC = "storefront-local.yaml"
SCHEMA = "spec.schema.json"
# What changes when the example leaves the repository: (text, replacement, occurrences).
# Each must occur exactly so often, so an edit of the example cannot silently break init.
EDITS = (
    ("# yaml-language-server: $schema=../../schemas/spec.schema.json",
     f"# yaml-language-server: $schema={SCHEMA}", 1),
    ("specs/examples/storefront-local.yaml", SPEC, 2),
    # the script that drew the images is not shipped
    (" (drawn by\n# images/make_images.py) x two sign designs x", " x two sign designs\n# x", 1),
    ("  dir: ../../out/storefront-local", "  dir: out/storefront-local", 1),
)
README = """\
# An example specrunner campaign

`{spec}` edits three small storefront photos (in `images/`): 3 inputs x 2 prompts
x 2 styles = 12 images, $0.96 of simulated spend on the built-in local server. Editors
that read its first line, `# yaml-language-server: $schema={schema}` (VS Code with the
YAML extension, for one), complete and check the spec as you type.

In this folder:

```sh
specrunner validate {spec}                # check it; nothing is sent
specrunner plan {spec}                    # every request and its cost
specrunner run {spec} --local             # run it on the local server, no key needed
specrunner report {spec} --format html    # a contact sheet: out/storefront-local/report/
```

Results go to `out/storefront-local/`. Running again sends nothing: every task is done.
Edit a prompt and run again: only the tasks it changed run. To run against Runware, set
`RUNWARE_API_KEY` and leave out `--local`.
"""


@dataclass(frozen=True)
class StarterFile:
    """One file `init` writes: its path relative to the destination, and its bytes."""

    relpath: str
    data: bytes


def _spec_text() -> str:
    text = (EXAMPLES_DIR / SPEC).read_text(encoding="utf-8")
    for old, new, count in EDITS:
        if text.count(old) != count:  # the example changed: EDITS must follow
            raise RuntimeError(f"{SPEC}: expected {old!r} {count} time(s), found "
                               f"{text.count(old)}")
        text = text.replace(old, new)
    return text


def files() -> tuple[StarterFile, ...]:
    """Every file of the example campaign, in the order they are written."""
    images = sorted(p for p in (EXAMPLES_DIR / "images").iterdir()
                    if p.suffix in (".jpg", ".png"))
    readme = README.format(spec=SPEC, schema=SCHEMA)
    return (
        StarterFile(SPEC, _spec_text().encode()),
        StarterFile(SCHEMA, (models.SCHEMA_DIR / SCHEMA).read_bytes()),
        *(StarterFile(f"images/{p.name}", p.read_bytes()) for p in images),
        StarterFile("README.md", readme.encode()),
    )


def write(dest: Path, shown_dest: str | None = None) -> tuple[list[str], list[str]]:
    """Write the example into `dest` (created if needed): (files written, files already
    there with the same bytes). UsageError, and nothing written, if `dest` is a file or any
    file there differs."""
    if dest.exists() and not dest.is_dir():
        raise UsageError(f"{shown_dest or dest} exists and is not a folder")
    todo = files()
    written, same, clash = [], [], []
    for f in todo:
        target = dest / f.relpath
        blocked = [p for p in target.relative_to(dest).parents if p != Path(".")
                   and (dest / p).exists() and not (dest / p).is_dir()]
        if blocked:
            clash.append(str(blocked[-1]))  # a file where a folder must go
        elif target.is_dir() or (target.exists() and target.read_bytes() != f.data):
            clash.append(f.relpath)
        elif target.exists():
            same.append(f.relpath)
    if clash:
        raise UsageError(
            f"{shown_dest or dest} already has different " + ", ".join(dict.fromkeys(clash))
            + "; nothing was written", hint="choose another folder, or move those files away")
    for f in todo:
        if f.relpath in same:
            continue
        target = dest / f.relpath
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp")
        tmp.write_bytes(f.data)
        tmp.replace(target)  # never a half-written file under the real name
        written.append(f.relpath)
    return written, same
