"""The loop pipeline on the tiny family: FramePackLoop's structure, resume, frame counts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fploopd.core.plan import inverted_section, original_paddings
from fploopd.engine.denoiser import StockTransformer
from fploopd.engine.sections import Checkpoint, SectionContext, sample_section
from fploopd.errors import Cancelled
from fploopd.media import probe_video
from fploopd.media.limits import MediaLimits
from fploopd.pipelines import loop, run_job
from fploopd.pipelines.common import encode_conditioning, guidance_of, prepare_image
from fploopd.pipelines.progress import Reporter
from fploopd.spec import JobSpec

SPEC = JobSpec(prompt="waves", pipeline="loop", resolution=64, window=2, main_sections=2, connection_sections=2,
               steps=3, loop_count=3)  # fmt: skip


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    y, x = np.mgrid[0:80, 0:96]
    return np.stack([(x * 2) % 256, (y * 3) % 256, (x + y) % 256], axis=-1).astype(np.uint8)


@pytest.fixture(scope="module")
def prepared(tiny_components, image):
    start = prepare_image(tiny_components, image, SPEC.resolution)
    cond = encode_conditioning(tiny_components, SPEC.prompt, "", SPEC, start.pixels)
    return start, cond


def reference_loop_latents(components, cond, start, spec: JobSpec, seed: int):
    """FramePackLoop's loop written out as it is (history buffers, splits), over our sampler."""
    model, window = StockTransformer(components.transformer), spec.window
    h, w = start.latent_size
    rnd = torch.Generator("cpu").manual_seed(seed)

    def section(indices, clean, h2, h4):
        return sample_section(model, cond, SectionContext(indices, clean, h2, h4), latent_size=(h, w),
                              steps=spec.steps, generator=rnd, guidance=guidance_of(spec), device=components.device)  # fmt: skip

    history = torch.zeros(1, 16, 1 + 2 + 16, h, w)
    for padding in original_paddings(spec.main_sections):
        blank = padding * window + spec.padding_sections * window
        post, x2, x4 = history[:, :, :19].split([1, 2, 16], dim=2)
        new = section(inverted_section(blank, window), torch.cat([start.latent, post], dim=2), x2, x4)
        history = torch.cat([new, history], dim=2)
    main = history[:, :, : spec.main_sections * window]
    post_history = main
    n = min(16, spec.main_sections * window - 3)
    for padding in original_paddings(spec.connection_sections):
        post, x2, x4 = post_history[:, :, : 3 + n].split([1, 2, n], dim=2)
        clean = torch.cat([post_history[:, :, -1:], post], dim=2)
        new = section(inverted_section(padding * window, window, n), clean, x2, x4)
        post_history = torch.cat([new, post_history], dim=2)
    return main, post_history[:, :, : spec.connection_sections * window]


def test_latents_follow_framepackloop(tiny_components, prepared):
    start, cond = prepared
    model = StockTransformer(tiny_components.transformer)
    got = loop.generate_latents(tiny_components, model, cond, start, SPEC, seed=7)
    main, conn = reference_loop_latents(tiny_components, cond, start, SPEC, seed=7)
    assert got.main.shape[:3] == (1, 16, 4) and got.connection.shape[:3] == (1, 16, 4)
    assert torch.equal(got.main, main) and torch.equal(got.connection, conn)
    other = loop.generate_latents(tiny_components, model, cond, start, SPEC, seed=8)
    assert not torch.equal(other.main, main)


def test_resume_after_a_stop_equals_an_uninterrupted_run(tiny_components, prepared, tmp_path):
    start, cond = prepared
    model = StockTransformer(tiny_components.transformer)
    whole = loop.generate_latents(tiny_components, model, cond, start, SPEC, seed=11)

    ckpt = Checkpoint(tmp_path / "ckpt.safetensors", key="k")
    seen = []

    def stop_in_third_section(progress):
        seen.append((progress.section, progress.step))

    reporter = Reporter(stop_in_third_section, should_stop=lambda: seen and seen[-1] == (3, 2))
    with pytest.raises(Cancelled):
        loop.generate_latents(tiny_components, model, cond, start, SPEC, seed=11, checkpoint=ckpt, reporter=reporter)
    assert ckpt.load().done == 2  # two sections finished; the third was stopped mid-way

    resumed = loop.generate_latents(tiny_components, model, cond, start, SPEC, seed=11, checkpoint=ckpt)
    assert torch.equal(resumed.main, whole.main) and torch.equal(resumed.connection, whole.connection)
    assert Checkpoint(tmp_path / "ckpt.safetensors", key="other").load() is None


def test_loop_job_writes_a_1loop_and_an_n_loop(tiny_components, image, tmp_path):
    from PIL import Image

    src = tmp_path / "in.png"
    Image.fromarray(image).save(src)
    result = run_job(SPEC, {"image": src}, tmp_path / "out", name="sea", seeds=[5], components=tiny_components,
                     work_dir=tmp_path / "work")  # fmt: skip
    by_kind = {o.kind: o for o in result.outputs}
    one, many = by_kind["1loop"], by_kind["loop"]
    assert one.path.name == "sea_5_1loop.mp4" and many.path.name == "sea_5_loop_3.mp4"
    frames = 4 * SPEC.window * (SPEC.main_sections + SPEC.connection_sections)
    info = probe_video(one.path, MediaLimits())
    assert (info.frames, info.fps, info.codec) == (frames, 30, "h264")
    assert probe_video(many.path, MediaLimits()).frames == 3 * frames == many.frames


def test_too_short_main_for_a_connection_is_refused_with_the_spec():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="main_sections x window >= 4 latents for its connection, got 3 x 1"):
        JobSpec.model_validate({**SPEC.model_dump(), "window": 1, "main_sections": 3})
