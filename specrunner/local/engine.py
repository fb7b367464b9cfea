"""The local edit engine: a deterministic, visible stand-in for Ideogram's inpainting.

`edit()` paints a panel over the masked region of the seed image: coloured by `styleType`,
carrying the quoted text of the prompt, with a pattern that varies with the result's seed.
Only masked pixels change:

- mask white = repaint, black = keep, grey = partial (alpha blend), Runware's convention;
  a mask with an alpha channel counts as black where it is transparent;
- mask values <= MASK_KEEP_MAX count as black and >= MASK_FULL_MIN as white, so the noise of
  a JPEG-compressed mask does not leak edits into the kept area;
- PNG and WEBP output are lossless (WEBP is encoded losslessly, `outputQuality` is its
  effort), so every kept pixel is bit-identical to the decoded seed. JPG output is lossy: a
  kept pixel equals the seed *encoded alone with the same quality*, exactly, in every 16x16
  JPEG block that is more than one block away from the mask's bounding box (tested).

URL inputs cannot be fetched here: `placeholder_seed` / `placeholder_mask` stand in
(PLACEHOLDER_SIZE, mask = the centred rectangle of half the width and height).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import random
import re
from functools import lru_cache

from PIL import Image, ImageDraw, ImageFont, ImageOps

PLACEHOLDER_SIZE = (1024, 768)
UPLOAD_MAX_SIDE = 2048
MAX_PIXELS = 40_000_000
MASK_KEEP_MAX = 8
MASK_FULL_MIN = 247
MIME = {"JPG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp"}
EXT = {"JPG": "jpg", "PNG": "png", "WEBP": "webp"}
STYLE_COLOURS: dict[str, tuple[int, int, int]] = {
    "AUTO": (70, 90, 120),
    "GENERAL": (20, 120, 120),
    "REALISTIC": (120, 85, 55),
    "DESIGN": (25, 35, 80),
    "RENDER_3D": (95, 50, 140),
    "ANIME": (215, 85, 150),
    "FICTION": (35, 110, 50),
}
_DATA_URI = re.compile(r"^data:image/(png|jpe?g|webp);base64,(.*)$", re.S | re.I)
# The typographic quotes are meant: prompts quote their text with them as often as with ASCII.
_QUOTED = re.compile(r"\"([^\"]+)\"|“([^”]+)”|‘([^’]+)’|(?<![\w])'([^']+?)'(?![\w])")  # noqa: RUF001


class InputError(ValueError):
    """An input image that cannot be used (not decodable, wrong format, too large)."""


def inline_bytes(value: str) -> bytes:
    """The bytes of a data URI or bare base64 string; InputError if it is neither."""
    m = _DATA_URI.match(value)
    payload = m.group(2) if m else value
    if value.startswith("data:") and not m:
        raise InputError("data URI must be data:image/(png|jpeg|webp);base64,...")
    try:
        return base64.b64decode("".join(payload.split()), validate=True)
    except (binascii.Error, ValueError):
        raise InputError("not a URL, an image UUID, a data URI or base64") from None


def decode(data: bytes) -> Image.Image:
    """Decode PNG/JPEG/WEBP bytes to a loaded image (EXIF orientation applied)."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.format not in ("PNG", "JPEG", "WEBP"):
                raise InputError(f"unsupported image format {im.format} (PNG, JPG or WEBP)")
            if im.width * im.height > MAX_PIXELS:
                raise InputError(f"image of {im.width}x{im.height} is too large")
            im.load()
            out = ImageOps.exif_transpose(im)
    except InputError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise InputError(f"cannot decode image: {exc.__class__.__name__}") from None
    if out.mode not in ("RGB", "RGBA", "L", "LA"):
        out = out.convert("RGBA" if "A" in out.getbands() or "transparency" in out.info
                          else "RGB")
    return out


def downscale(image: Image.Image, max_side: int = UPLOAD_MAX_SIDE) -> Image.Image:
    """Shrink so the long side is at most `max_side` (as Runware stores uploads)."""
    if max(image.size) <= max_side:
        return image
    scale = max_side / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.LANCZOS)


@lru_cache(maxsize=32)
def placeholder_seed(key: str, size: tuple[int, int] = PLACEHOLDER_SIZE) -> Image.Image:
    """A deterministic stand-in seed image for an input URL that cannot be fetched."""
    h = hashlib.sha256(key.encode()).digest()
    sky, ground = (h[0], h[1], 160 + h[2] % 96), (60 + h[3] % 80, 50 + h[4] % 60, 40)
    grad = Image.linear_gradient("L").resize(size)
    img = ImageOps.colorize(grad, sky, ground).convert("RGB")
    d = ImageDraw.Draw(img)
    w, hh = size
    for i in range(6):
        x0 = (i * w) // 6 + 4
        d.rectangle([x0, hh // 3 + (h[5 + i] % 40), x0 + w // 7, hh - 10],
                    fill=(h[11 + i], h[17 + i], h[23 + i]))
    d.text((10, 10), "specrunner local simulator: placeholder (URL not fetched)",
           fill=(255, 255, 255), font=_font(max(10, hh // 40)))
    return img


@lru_cache(maxsize=32)
def placeholder_mask(size: tuple[int, int] = PLACEHOLDER_SIZE) -> Image.Image:
    """The stand-in mask: black with a white centred rectangle of half the width and height."""
    w, h = size
    mask = Image.new("L", size, 0)
    ImageDraw.Draw(mask).rectangle([w // 4, h // 4, w // 4 + w // 2 - 1, h // 4 + h // 2 - 1],
                                   fill=255)
    return mask


def mask_levels(mask: Image.Image) -> Image.Image:
    """The mask as 'L' blend weights: 255 repaint, 0 keep; alpha multiplies; noise clipped."""
    if mask.mode in ("RGBA", "LA", "PA") or "transparency" in mask.info:
        rgba = mask.convert("LA")
        lum, alpha = rgba.split()
        lum = Image.composite(lum, Image.new("L", mask.size, 0), alpha)
    else:
        lum = mask.convert("L")
    table = [0 if v <= MASK_KEEP_MAX else 255 if v >= MASK_FULL_MIN else v for v in range(256)]
    return lum.point(table)


def result_seed(task_uuid: str, index: int) -> int:
    """The 64-bit (signed-int64-safe) seed of result `index`; usually above 2**53."""
    digest = hashlib.sha256(f"local.seed\0{task_uuid}\0{index}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1 or 1


def image_uuid(task_uuid: str, index: int) -> str:
    """A deterministic UUIDv4 for result `index` of a task."""
    b = bytearray(hashlib.sha256(f"local.image\0{task_uuid}\0{index}".encode()).digest()[:16])
    b[6] = (b[6] & 0x0F) | 0x40
    b[8] = (b[8] & 0x3F) | 0x80
    x = b.hex()
    return f"{x[:8]}-{x[8:12]}-{x[12:16]}-{x[16:20]}-{x[20:]}"


def quoted_texts(prompt: str) -> list[str]:
    """The texts a prompt quotes ("..." or '...'), in order."""
    return [next(g for g in m.groups() if g).strip() for m in _QUOTED.finditer(prompt)]


@lru_cache(maxsize=64)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def render(seed: Image.Image, mask: Image.Image, prompt: str, style: str, seed_value: int
           ) -> Image.Image:
    """The edited image: `seed` with a panel blended in where `mask` (from mask_levels) > 0."""
    base = seed.convert("RGBA" if "A" in seed.getbands() else "RGB")
    bbox = mask.getbbox()
    if bbox is None:
        return base
    rng = random.Random(seed_value)
    r, g, b = STYLE_COLOURS.get(style, STYLE_COLOURS["AUTO"])
    shift = rng.randint(-30, 30)
    colour = tuple(max(0, min(255, c + shift)) for c in (r, g, b))
    light = tuple(min(255, c + 40) for c in colour)
    ink = (250, 240, 210) if sum(colour) < 384 else (20, 20, 20)
    panel = Image.new("RGB", base.size, colour)
    d = ImageDraw.Draw(panel)
    x0, y0, x1, y1 = bbox
    bw, bh = x1 - x0, y1 - y0
    step = rng.randint(10, 40)
    slope = rng.choice((-1, 1))
    for k in range(-bh, bw + bh, step):  # seed-dependent diagonal stripes
        d.line([(x0 + k, y0), (x0 + k + slope * bh, y1)], fill=light, width=max(1, step // 5))
    border = max(2, min(bw, bh) // 30)
    d.rectangle([x0 + border, y0 + border, x1 - border - 1, y1 - border - 1],
                outline=ink, width=border)
    lines = quoted_texts(prompt) or [prompt[:40]]
    line_h = max(6, int((bh - 4 * border) / (len(lines) * 1.25)))
    widest = max(_font(100).getlength(t) for t in lines) or 1.0
    size = max(6, min(line_h, int(100 * (bw - 6 * border) / widest)))
    font = _font(size)
    top = y0 + (bh - size * 1.25 * len(lines)) / 2
    for i, text in enumerate(lines):
        x = x0 + (bw - font.getlength(text)) / 2
        d.text((x, top + i * size * 1.25), text, fill=ink, font=font)
    if base.mode == "RGBA":
        panel = panel.convert("RGBA")
    return Image.composite(panel, base, mask)


def encode(image: Image.Image, output_format: str, quality: int) -> bytes:
    """Encode as JPG (lossy), PNG or WEBP (both lossless); see the module notes."""
    buf = io.BytesIO()
    if output_format == "JPG":
        image.convert("RGB").save(buf, "JPEG", quality=quality)
    elif output_format == "PNG":
        image.save(buf, "PNG", compress_level=3)
    elif output_format == "WEBP":
        image.save(buf, "WEBP", lossless=True, quality=quality, method=1)
    else:
        raise ValueError(f"unknown output format {output_format}")
    return buf.getvalue()


def edit(seed: Image.Image, mask: Image.Image, *, prompt: str, style: str, task_uuid: str,
         index: int, output_format: str, quality: int) -> bytes:
    """Render result `index` of a task and encode it; deterministic in all arguments."""
    if seed.size != mask.size:
        raise InputError(f"mask is {mask.size[0]}x{mask.size[1]} but seed is "
                         f"{seed.size[0]}x{seed.size[1]}")
    out = render(seed, mask_levels(mask), prompt, style, result_seed(task_uuid, index))
    return encode(out, output_format, quality)


@lru_cache(maxsize=8)
def tiny_image(output_format: str) -> bytes:
    """A fixed 8x8 image for the no-render mode (benchmarks)."""
    return encode(Image.new("RGB", (8, 8), (128, 64, 32)), output_format, 90)
