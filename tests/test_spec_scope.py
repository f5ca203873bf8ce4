"""Which pipelines each spec field applies to, and the refusal of settings that could not act."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fploopd.engine.denoiser import StockTransformer
from fploopd.errors import InputError
from fploopd.pipelines import i2v
from fploopd.pipelines.common import encode_conditioning, prepare_image
from fploopd.spec import MEDIA_FIELDS, PIPELINES, JobSpec, inapplicable, inapplicable_error, pipelines_of


def test_the_fields_say_where_they_apply():
    assert pipelines_of("loop_count") == ("loop", "video2loop")
    assert pipelines_of("padding_sections") == ("loop",)
    assert pipelines_of("decode") == ("loop",)
    assert set(pipelines_of("main_sections")) == {"loop", "i2v"}
    assert set(pipelines_of("connection_sections")) == {"loop", "connect", "video2loop"}
    for everywhere in ("prompt", "steps", "window", "resolution", "fps", "crf", "outputs", "teacache", "seed", "count"):
        assert pipelines_of(everywhere) == PIPELINES
    for field in JobSpec.model_fields:
        assert set(pipelines_of(field)) <= set(PIPELINES)


def test_media_fields_agree_with_the_pipelines_media():
    for pipeline, fields in MEDIA_FIELDS.items():
        assert [f for f in ("image", "video", "head", "tail") if pipeline in pipelines_of(f)] == sorted(
            fields, key=("image", "video", "head", "tail").index
        )


def test_inapplicable_lists_the_keys_a_pipeline_ignores_in_the_order_given():
    keys = ["prompt", "loop_count", "steps", "padding_sections", "main_sections", "decode"]
    assert inapplicable(keys, "connect") == ["loop_count", "padding_sections", "main_sections", "decode"]
    assert inapplicable(keys, "video2loop") == ["padding_sections", "main_sections", "decode"]
    assert inapplicable(keys, "i2v") == ["loop_count", "padding_sections", "decode"]
    assert inapplicable(keys, "loop") == []
    assert inapplicable(["promt", "steps"], "connect") == []  # unknown keys: the spec's own error


def test_the_error_names_the_file_the_field_and_where_it_applies():
    err = inapplicable_error(["prompt", "loop_count"], "connect", "cat.json")
    assert isinstance(err, InputError)
    assert err.message == "cat.json: loop_count is not used by the connect pipeline (it applies to loop, video2loop)"
    assert (err.field, err.file) == ("loop_count", "cat.json")
    both = inapplicable_error(["loop_count", "padding_sections"], "i2v", "x.json")
    assert both is not None and "loop_count is not used" in both.message and "padding_sections is not used" in both.message
    assert both.message.count("x.json") == 1
    assert inapplicable_error(["prompt", "steps"], "connect", "cat.json") is None
    # Profiles set every field: only the keys a sidecar set itself are checked, so a full profile's
    # values never trip it, while the same fields named by the sidecar do.
    assert inapplicable_error([], "connect", "cat.json") is None
    labelled = inapplicable_error(["loop_count"], "i2v", None, label=lambda f: "--" + f.replace("_", "-"))
    assert labelled is not None and labelled.message.startswith("--loop-count is not used by the i2v pipeline")


# The metadata must match what the pipelines read: the settings marked as not used by a pipeline
# really change nothing it makes.


@pytest.fixture(scope="module")
def prepared(tiny_components):
    y, x = np.mgrid[0:64, 0:64]
    image = np.stack([x * 4 % 256, y * 4 % 256, (x + y) % 256], -1).astype(np.uint8)
    spec = JobSpec(prompt="", pipeline="i2v", resolution=64, window=2, steps=2, main_sections=2)
    start = prepare_image(tiny_components, image, spec.resolution)
    return spec, start, encode_conditioning(tiny_components, "", "", spec, start.pixels)


def test_settings_marked_unused_by_i2v_change_nothing_it_samples(tiny_components, prepared):
    spec, start, cond = prepared
    model = StockTransformer(tiny_components.transformer)
    base = i2v.generate_latents(tiny_components, model, cond, start, spec, seed=3)
    changed = {"connection_sections": 3, "padding_sections": 2, "loop_count": 4}
    assert set(changed) == set(inapplicable(changed, "i2v"))
    other = i2v.generate_latents(tiny_components, model, cond, start, spec.model_copy(update=changed), seed=3)
    assert torch.equal(base, other)
    # ... while a setting it does use does change it.
    used = i2v.generate_latents(tiny_components, model, cond, start, spec.model_copy(update={"main_sections": 1}), seed=3)
    assert used.shape != base.shape
