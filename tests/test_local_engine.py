"""The edit engine changes only masked pixels, visibly and deterministically."""

from __future__ import annotations

import io

import pytest
from PIL import Image, ImageChops, ImageDraw, ImageFilter

from specrunner.local import engine


def photo(size: tuple[int, int], mode: str = "RGB") -> Image.Image:
    """A noisy, textured image: every 8x8 block has detail, like a photo."""
    noise = Image.effect_noise(size, 70).convert("RGB")
    grad = Image.linear_gradient("L").resize(size).convert("RGB")
    img = ImageChops.add(noise, grad, scale=2.0)
    if mode == "RGBA":
        alpha = Image.linear_gradient("L").rotate(90).resize(size)
        img.putalpha(alpha)
    return img


def irregular_mask(size: tuple[int, int], feather: bool = True) -> Image.Image:
    """An off-grid ellipse plus a polygon, with a soft (grey) edge when `feather`."""
    w, h = size
    mask = Image.new("L", size, 0)
    d = ImageDraw.Draw(mask)
    d.ellipse([w * 0.13, h * 0.21, w * 0.57, h * 0.63], fill=255)
    d.polygon([(w * 0.6, h * 0.7), (w * 0.93, h * 0.55), (w * 0.81, h * 0.97)], fill=255)
    return mask.filter(ImageFilter.GaussianBlur(3)) if feather else mask


def decoded(data: bytes, mode: str = "RGB") -> Image.Image:
    with Image.open(io.BytesIO(data)) as im:
        return im.convert(mode)


def changed(a: Image.Image, b: Image.Image) -> Image.Image:
    """An 'L' image: 255 where a and b differ in any channel."""
    diff = ImageChops.difference(a, b)
    return diff.convert("RGB").convert("L").point(lambda v: 255 * (v > 0)) if diff.mode != "L" \
        else diff.point(lambda v: 255 * (v > 0))


def run_edit(seed: Image.Image, mask: Image.Image, fmt: str, **kw: object) -> bytes:
    args = dict(prompt='Sign reading "MIRELLE PATISSERIE"', style="DESIGN",
                task_uuid="0b8f8a9e-2c7f-4a52-9a55-0d6a4d7b8c11", index=0, output_format=fmt,
                quality=95)
    args.update(kw)
    return engine.edit(seed, mask, **args)  # type: ignore[arg-type]


@pytest.mark.parametrize("fmt", ["PNG", "WEBP"])
@pytest.mark.parametrize("mask_via_jpeg", [False, True])
def test_lossless_outputs_keep_every_unmasked_pixel_exactly(fmt: str, mask_via_jpeg: bool
                                                            ) -> None:
    seed, mask = photo((333, 217)), irregular_mask((333, 217))
    if mask_via_jpeg:  # a JPEG mask carries compression noise in its black area
        buf = io.BytesIO()
        mask.save(buf, "JPEG", quality=75)
        mask = decoded(buf.getvalue(), "L")
    out = decoded(run_edit(seed, mask, fmt))
    keep = engine.mask_levels(mask).point(lambda v: 255 * (v == 0))
    diff = changed(out, seed)
    assert ImageChops.multiply(diff, keep).getbbox() is None  # not one kept pixel changed
    full = engine.mask_levels(mask).point(lambda v: 255 * (v == 255))
    changed_in_mask = ImageChops.multiply(diff, full).histogram()[255]
    assert changed_in_mask > 0.9 * full.histogram()[255]  # and the masked area was repainted


def test_rgba_seed_keeps_alpha_and_colour_outside_the_mask() -> None:
    seed, mask = photo((160, 120), "RGBA"), irregular_mask((160, 120), feather=False)
    out = decoded(run_edit(seed, mask, "PNG"), "RGBA")
    keep = engine.mask_levels(mask).point(lambda v: 255 * (v == 0))
    assert ImageChops.multiply(changed(out, seed).convert("L"), keep).getbbox() is None
    assert out.getchannel("A").getextrema() == seed.getchannel("A").getextrema()


def test_jpg_output_equals_the_seed_encoded_alone_away_from_the_mask() -> None:
    """JPG is lossy, so the guarantee is: every 16x16 block more than one block away from the
    mask's bounding box decodes exactly like the seed encoded alone at the same quality."""
    seed, mask = photo((400, 300)), Image.new("L", (400, 300), 0)
    ImageDraw.Draw(mask).ellipse([131, 97, 263, 201], fill=255)  # off the 16-px grid
    mask = mask.filter(ImageFilter.GaussianBlur(2))
    for quality in (95, 40):
        out = decoded(run_edit(seed, mask, "JPG", quality=quality))
        alone = decoded(engine.encode(seed, "JPG", quality))
        x0, y0, x1, y1 = engine.mask_levels(mask).getbbox()
        near = (max(0, x0 // 16 * 16 - 16), max(0, y0 // 16 * 16 - 16),
                (x1 + 15) // 16 * 16 + 16, (y1 + 15) // 16 * 16 + 16)
        far = Image.new("L", seed.size, 255)
        ImageDraw.Draw(far).rectangle([near[0], near[1], near[2] - 1, near[3] - 1], fill=0)
        assert ImageChops.multiply(changed(out, alone), far).getbbox() is None
        assert far.histogram()[255] > 0.3 * seed.width * seed.height  # the check covers a lot
        # and the edit is real: inside the mask the output is far from the seed
        inside = ImageChops.difference(out, seed).crop((180, 130, 215, 170))
        assert max(hi for _lo, hi in inside.getextrema()) > 100


def test_alpha_mask_counts_transparent_as_keep() -> None:
    seed = photo((120, 90))
    mask = Image.new("LA", (120, 90), (255, 0))  # white but fully transparent everywhere...
    ImageDraw.Draw(mask).rectangle([30, 20, 89, 69], fill=(255, 255))  # ...except here
    out = decoded(run_edit(seed, mask, "PNG"))
    assert changed(out, seed).getbbox() == (30, 20, 90, 70)


def test_mask_levels_clip_noise_and_keep_grey_as_partial() -> None:
    ramp = Image.new("L", (256, 1))
    ramp.putdata(list(range(256)))
    levels = list(engine.mask_levels(ramp).tobytes())
    assert levels[: engine.MASK_KEEP_MAX + 1] == [0] * (engine.MASK_KEEP_MAX + 1)
    assert levels[engine.MASK_FULL_MIN:] == [255] * (256 - engine.MASK_FULL_MIN)
    assert levels[100] == 100


def test_output_is_deterministic_per_task_and_result_index() -> None:
    seed, mask = photo((200, 150)), irregular_mask((200, 150))
    a = run_edit(seed, mask, "PNG", index=0)
    assert run_edit(seed, mask, "PNG", index=0) == a
    b = run_edit(seed, mask, "PNG", index=1)
    c = run_edit(seed, mask, "PNG", task_uuid="5a1d3f5e-8d0b-4c1e-9f6a-1b2c3d4e5f60")
    assert len({a, b, c}) == 3
    assert engine.result_seed("t", 0) == engine.result_seed("t", 0) != engine.result_seed("t", 1)


def _mean_in_mask(data: bytes, mask: Image.Image) -> tuple[float, ...]:
    out = decoded(data)
    box = mask.getbbox()
    hist = out.crop(box).resize((1, 1), Image.Resampling.BOX).getpixel((0, 0))
    return tuple(float(c) for c in hist)


def test_style_type_colours_the_panel_and_quoted_text_is_drawn() -> None:
    seed, mask = photo((300, 200)), engine.placeholder_mask((300, 200))
    design = _mean_in_mask(run_edit(seed, mask, "PNG", style="DESIGN"), mask)
    anime = _mean_in_mask(run_edit(seed, mask, "PNG", style="ANIME"), mask)
    assert anime[0] - design[0] > 80  # ANIME is pink, DESIGN navy
    with_text = decoded(run_edit(seed, mask, "PNG", prompt='a sign reading "WIDE TEXT HERE"'))
    other_text = decoded(run_edit(seed, mask, "PNG", prompt='a sign reading "II"'))
    diff = changed(with_text, other_text)
    assert diff.getbbox() is not None
    ink = (250, 240, 210)  # DESIGN's light ink on its dark panel
    assert with_text.crop(mask.getbbox()).getcolors(1 << 20) is not None
    assert sum(n for n, c in with_text.crop(mask.getbbox()).getcolors(1 << 20) if c == ink) > 50


def test_quoted_texts_of_the_documented_prompts() -> None:
    assert engine.quoted_texts('reading "MIRELLE PATISSERIE" in gold') == ["MIRELLE PATISSERIE"]
    diner = ("Include the exact text: 'SUNRISE STACK', 'MALTED SHAKES', 'PIE BY THE SLICE', "
             "and 'OPEN ALL NIGHT'. Don't alter the diner's sign.")
    assert engine.quoted_texts(diner) == ["SUNRISE STACK", "MALTED SHAKES", "PIE BY THE SLICE",
                                          "OPEN ALL NIGHT"]
    assert engine.quoted_texts("text reading 'STORY & SPINE' and more") == ["STORY & SPINE"]
    assert engine.quoted_texts("no quotes at all") == []


def test_placeholders_have_the_documented_size_and_mask() -> None:
    seed = engine.placeholder_seed("https://a.invalid/x.jpg")
    assert seed.size == engine.PLACEHOLDER_SIZE == (1024, 768)
    assert engine.placeholder_seed("https://a.invalid/x.jpg") is seed  # cached, deterministic
    mask = engine.placeholder_mask()
    assert mask.getbbox() == (256, 192, 768, 576)
    assert mask.histogram()[255] == 512 * 384 and mask.histogram()[0] == 1024 * 768 - 512 * 384


def test_downscale_to_2048_on_the_long_side() -> None:
    assert engine.downscale(Image.new("RGB", (4096, 1000))).size == (2048, 500)
    assert engine.downscale(Image.new("RGB", (1000, 3000))).size == (683, 2048)
    small = Image.new("RGB", (2048, 10))
    assert engine.downscale(small) is small


def test_inputs_that_are_not_usable_images_are_refused() -> None:
    gif = io.BytesIO()
    Image.new("RGB", (4, 4)).save(gif, "GIF")
    with pytest.raises(engine.InputError, match="GIF"):
        engine.decode(gif.getvalue())
    with pytest.raises(engine.InputError):
        engine.decode(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(engine.InputError):
        engine.inline_bytes("data:text/plain;base64,aGVsbG8=")
    with pytest.raises(engine.InputError, match="seed"):
        engine.edit(photo((10, 10)), Image.new("L", (10, 11)), prompt="p", style="AUTO",
                    task_uuid="t", index=0, output_format="PNG", quality=90)


def test_empty_mask_returns_the_seed_unchanged() -> None:
    seed = photo((64, 64))
    out = decoded(run_edit(seed, Image.new("L", (64, 64), 0), "PNG"))
    assert changed(out, seed).getbbox() is None
