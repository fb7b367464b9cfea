"""Inspect local seed and mask images with Pillow: format, pixel size, content hash, mask use.

Only what a check needs is decoded: `inspect()` reads the header (format and size) and hashes
the bytes; `mask_coverage()` decodes one mask to greyscale. Decompression bombs are refused
before decoding (MAX_PIXELS) and files above MAX_FILE_BYTES are never opened. Problems raise
`ImageProblem` with a stable `code` and a message that does not repeat the file's content.
"""

from __future__ import annotations

import hashlib
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import cast
from urllib.parse import parse_qsl, urlsplit

from PIL import Image, UnidentifiedImageError

MAX_FILE_BYTES = 30 * 1024 * 1024
MAX_PIXELS = 64_000_000
FORMATS = ("PNG", "JPEG", "WEBP")
# A mask pixel edits when it is at least this far from "keep" (0-255); JPEG noise stays below.
EDIT_THRESHOLD = 8
UUID_RE = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-"
                     r"[0-9a-fA-F]{12}$")
SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+):")
_SECRET_PARAMS = {"apikey", "token", "accesstoken", "authorization", "secret", "password",
                  "key", "auth"}


class ImageProblem(Exception):
    """A local image that cannot be used; `code` names the kind of problem."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class ImageInfo:
    """What specrunner needs to know about one local image file."""

    format: str  # "PNG" | "JPEG" | "WEBP"
    size: tuple[int, int]  # (width, height)
    sha256: str


@dataclass(frozen=True)
class MaskCoverage:
    """Whether a mask edits any pixel, and whether it edits every pixel."""

    edits_some: bool
    edits_all: bool


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _open(path: Path) -> Image.Image:
    try:
        exists, is_file = path.exists(), path.is_file()
        size = path.stat().st_size if is_file else 0
    except OSError as exc:  # e.g. a name too long to be a path (base64 text pasted in)
        raise ImageProblem("image-invalid", f"cannot use this path ({exc.strerror or exc}); "
                           "give the path of an image file, an https URL or an image UUID"
                           ) from None
    if not exists:
        raise ImageProblem("image-missing", "file not found")
    if not is_file:
        raise ImageProblem("image-not-file", "is not a file")
    if size > MAX_FILE_BYTES:
        raise ImageProblem(
            "image-too-large",
            f"file is too large ({size / 1048576:.1f} MiB; "
            f"at most {MAX_FILE_BYTES // 1048576} MiB)",
        )
    if size == 0:
        raise ImageProblem("image-invalid", "file is empty, not an image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(path)
    except Image.DecompressionBombError:
        raise ImageProblem("image-too-large", "image has too many pixels") from None
    except UnidentifiedImageError:
        raise ImageProblem("image-invalid", "not an image (PNG, JPEG or WEBP expected)") from None
    except OSError as exc:
        raise ImageProblem("image-invalid", f"cannot read image: {exc.strerror or exc}") from None
    if im.format not in FORMATS:
        im.close()
        raise ImageProblem(
            "image-format", f"is a {im.format} image; Runware accepts PNG, JPEG or WEBP"
        )
    width, height = im.size
    if width * height > MAX_PIXELS:
        im.close()
        raise ImageProblem(
            "image-too-large",
            f"image is {width}x{height} pixels (more than {MAX_PIXELS // 1_000_000} MP)",
        )
    return im


def inspect(path: Path) -> ImageInfo:
    """Format, size and hash of a local image, from its header (no full decode).

    Raises ImageProblem if it is missing, not a file, too large, or not PNG/JPEG/WEBP.
    """
    with _open(path) as im:
        fmt, size = str(im.format), (int(im.size[0]), int(im.size[1]))
    return ImageInfo(format=fmt, size=size, sha256=sha256_file(path))


def mask_coverage(path: Path, polarity: str = "white-edits") -> MaskCoverage:
    """Decode a mask to greyscale and report whether it edits some / every pixel.

    white-edits: a pixel edits when brighter than EDIT_THRESHOLD; black-edits: when darker
    than 255 - EDIT_THRESHOLD. Alpha is ignored. Raises ImageProblem if it cannot be decoded.
    """
    with _open(path) as im:
        try:
            if im.format == "JPEG":
                im.draft("L", im.size)
            # one band: (min, max) (Pillow's types also allow a tuple per band)
            low, high = cast("tuple[int, int]", im.convert("L").getextrema())
        except (OSError, ValueError) as exc:
            raise ImageProblem("image-invalid", f"cannot decode image: {exc}") from None
    if polarity == "black-edits":
        low, high = 255 - high, 255 - low
    return MaskCoverage(edits_some=high >= EDIT_THRESHOLD, edits_all=low >= EDIT_THRESHOLD)


def classify_ref(value: str) -> tuple[str, str | None]:
    """Classify an image reference as written: ('url'|'uuid'|'file', problem or None).

    https URLs only, without user:password@ or credential-like query parameters; an
    8-4-4-4-12 hex string is a Runware image UUID; anything without a scheme is a path.
    """
    if UUID_RE.match(value):
        return "uuid", None
    scheme = SCHEME_RE.match(value)
    if scheme is None:
        return "file", None
    if scheme.group(1).lower() != "https":
        return "url", f"only https URLs are accepted, not {scheme.group(1)}:"
    parts = urlsplit(value)
    if not parts.hostname:
        return "url", "URL has no host"
    if "@" in parts.netloc:
        return "url", "URL contains credentials (user:password@); remove them"
    for k, _ in parse_qsl(parts.query, keep_blank_values=True):
        if re.sub(r"[-_ ]", "", k.lower()) in _SECRET_PARAMS:
            return "url", f"URL carries a credential-like parameter `{k}`; remove it"
    return "url", None
