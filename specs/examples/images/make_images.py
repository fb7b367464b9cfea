"""Draw the small storefront seed images and sign masks used by storefront-local.yaml.

Run once from anywhere: `python specs/examples/images/make_images.py`; the outputs are
committed, so running it again is only needed to change them (it is deterministic).
Seeds: 512x384 JPG storefronts with a plain sign board; masks: PNG, white on the sign
(white = repaint, Runware's convention), black elsewhere.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

HERE = Path(__file__).resolve().parent
SIZE = (512, 384)

# name -> (wall colour, awning colour, sign box (x0, y0, x1, y1), door colour)
SHOPS = {
    "bakery": ((233, 214, 186), (176, 58, 46), (96, 40, 416, 104), (110, 70, 40)),
    "diner": ((200, 220, 226), (30, 120, 130), (136, 28, 376, 92), (60, 60, 70)),
    "records": ((90, 96, 110), (210, 120, 40), (72, 48, 440, 116), (40, 30, 30)),
}


def draw_shop(wall: tuple, awning: tuple, sign: tuple, door: tuple) -> Image.Image:
    img = Image.new("RGB", SIZE, (150, 180, 210))  # sky
    d = ImageDraw.Draw(img)
    d.rectangle((24, 16, 488, 360), fill=wall)  # facade
    d.rectangle(sign, fill=(245, 240, 225), outline=(60, 50, 40), width=4)  # blank sign board
    top = sign[3] + 12
    for i in range(8):  # striped awning
        x0 = 40 + i * 54
        d.polygon([(x0, top), (x0 + 54, top), (x0 + 62, top + 40), (x0 - 8, top + 40)],
                  fill=awning if i % 2 == 0 else (240, 236, 228))
    d.rectangle((60, top + 60, 300, 340), fill=(120, 160, 190), outline=(50, 50, 50), width=5)
    d.rectangle((340, top + 60, 440, 360), fill=door, outline=(30, 30, 30), width=4)
    d.ellipse((420, 250, 430, 260), fill=(220, 190, 90))  # door knob
    d.rectangle((0, 360, 512, 384), fill=(90, 90, 95))  # pavement
    return img


def draw_mask(sign: tuple) -> Image.Image:
    mask = Image.new("L", SIZE, 0)
    ImageDraw.Draw(mask).rectangle(sign, fill=255)
    return mask


def main() -> None:
    for name, (wall, awning, sign, door) in SHOPS.items():
        draw_shop(wall, awning, sign, door).save(HERE / f"{name}.jpg", quality=88,
                                                  optimize=True)
        draw_mask(sign).save(HERE / f"{name}-mask.png", optimize=True)


if __name__ == "__main__":
    main()
