"""``fploopd demo``: the out-of-the-box main job. A root, a generated picture dropped with its
sidecar into inbox/loop/, the daemon run once on the tiny model, and the paths it made."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFilter

from fploopd.fsutil import atomic_path, write_json_atomic

DEMO_STEM = "demo"
DEMO_SIDECAR: dict[str, Any] = {
    "prompt": "a calm lake at sunset, gentle ripples, clouds drifting",
    "resolution": 128,
    "main_sections": 1,
    "connection_sections": 1,
    "steps": 8,
    "loop_count": 2,
    "seed": 31337,
}


def sample_image(width: int = 320, height: int = 240) -> Image.Image:
    """A sunset over hills and a lake: gradients, edges and colour, so the model has structure to keep."""
    img = Image.new("RGB", (width, height))
    px = img.load()
    horizon = int(height * 0.62)
    for y in range(height):
        for x in range(width):
            if y < horizon:  # sky: deep blue to orange near the horizon
                t = y / horizon
                px[x, y] = (int(40 + 215 * t), int(60 + 110 * t**1.5), int(140 - 60 * t))
            else:  # water: darker, with ripple bands
                t = (y - horizon) / (height - horizon)
                ripple = 18 * math.sin(x / 7.0 + y * 0.9) * (1 - t)
                px[x, y] = (int(30 + 60 * (1 - t) + ripple), int(50 + 40 * (1 - t)), int(90 + 50 * t))
    draw = ImageDraw.Draw(img)
    sun = (int(width * 0.68), int(horizon * 0.72), int(height * 0.11))
    draw.ellipse((sun[0] - sun[2], sun[1] - sun[2], sun[0] + sun[2], sun[1] + sun[2]), fill=(255, 214, 120))
    for i, (shade, base, amp) in enumerate(((70, 0.78, 0.30), (45, 0.92, 0.22))):
        points = [(0, horizon)]
        for x in range(0, width + 1, 8):
            points.append((x, horizon - int(height * amp * (0.5 + 0.5 * math.sin(x / (23.0 + 9 * i) + i)) * base)))
        points.append((width, horizon))
        draw.polygon(points, fill=(shade, shade + 25, shade + 40))
    # The sun's reflection on the water.
    for k in range(6):
        y = horizon + 6 + k * 9
        half = sun[2] - k * 3
        draw.line((sun[0] - half, y, sun[0] + half, y), fill=(255, 190, 110), width=3)
    for x0 in (24, 46, 290):  # a few trees for sharp edges
        draw.polygon([(x0, horizon - 48), (x0 - 11, horizon), (x0 + 11, horizon)], fill=(20, 60, 35))
    return img.filter(ImageFilter.SMOOTH)


DEMO_LORA = "demo-style.safetensors"
DEMO_LORA_SCALE = 0.8


def add_demo_lora(loras: Path) -> dict[str, Any]:
    """A musubi-format LoRA for the tiny model in ``loras`` (written by the project's own test-data
    code, deterministic); returns the sidecar's ``loras`` entry for it."""
    from fploopd.engine.lora_testdata import write_tiny_lora

    path = loras / DEMO_LORA
    if not path.exists():
        with atomic_path(path, suffix=".safetensors") as tmp:
            write_tiny_lora(tmp, "musubi", seed=1)
    return {"file": DEMO_LORA, "scale": DEMO_LORA_SCALE}


def drop_demo(inbox_loop: Path, extra: dict[str, Any] | None = None) -> Path:
    """The picture first (temporary name, then renamed), the sidecar last: the drop protocol.
    ``extra``: more sidecar fields (the demo LoRA)."""
    stem = DEMO_STEM
    n = 1
    while (inbox_loop / f"{stem}.json").exists() or (inbox_loop / f"{stem}.png").exists():
        n += 1
        stem = f"{DEMO_STEM}-{n}"
    with atomic_path(inbox_loop / f"{stem}.png", suffix=".png") as tmp:
        sample_image().save(tmp, format="PNG")
    sidecar = inbox_loop / f"{stem}.json"
    write_json_atomic(sidecar, {**DEMO_SIDECAR, **(extra or {})})
    return sidecar
