"""Each fact about a spec field lives on the field; what other modules need is derived from it."""

from __future__ import annotations

import json
from importlib import resources

import pytest
from pydantic import ValidationError

from fploopd.commands.oneshot import NOT_OPTIONS
from fploopd.spec import (
    MEDIA_FIELD_NAMES,
    MEDIA_FIELDS,
    OUTPUT_ONLY_FIELDS,
    PIPELINES,
    SETTINGS_FIELDS,
    GenerationSettings,
    JobSpec,
    default_settings,
    is_bare_name,
    media_of,
    option_of,
)


def test_the_media_fields_come_from_the_fields_metadata():
    assert MEDIA_FIELD_NAMES == ("image", "video", "head", "tail")
    assert MEDIA_FIELDS == {
        "loop": ("image",),
        "connect": ("head", "tail"),
        "video2loop": ("video",),
        "i2v": ("image",),
    }
    assert [media_of(f).kind for f in MEDIA_FIELD_NAMES] == ["image", "video", "video", "video"]  # type: ignore[union-attr]
    assert [media_of(f).stem_suffix for f in MEDIA_FIELD_NAMES] == ["", "", "_head", "_tail"]  # type: ignore[union-attr]
    assert media_of("prompt") is None


def test_the_checkpoint_key_leaves_out_exactly_the_output_only_fields():
    # Changing one of these keeps a job's section checkpoints; any other field starts afresh.
    assert set(OUTPUT_ONLY_FIELDS) == {
        "outputs", "crf", "decode", "loop_count", "count", "consecutive_seeds", "priority", "tags", "profile", "seed",
        "channel",
    }  # fmt: skip
    spec = JobSpec(prompt="a cat", pipeline="loop", seed=3, crf=20, teacache=True)
    key = spec.latent_settings()
    assert set(key) == set(JobSpec.model_fields) - set(OUTPUT_ONLY_FIELDS)
    assert key["teacache"] is True and key["prompt"] == "a cat"


def test_the_one_shot_options_are_the_fields_with_help():
    assert NOT_OPTIONS == {"pipeline", "image", "video", "head", "tail", "priority", "channel"}
    for field in set(JobSpec.model_fields) - NOT_OPTIONS:
        option = option_of(field)
        assert option is not None and option.help


def test_the_shipped_default_profile_is_the_spec_defaults():
    """presets/default.json documents the defaults for users; it must say what the spec does."""
    shipped = json.loads((resources.files("fploopd") / "presets" / "default.json").read_text(encoding="utf-8"))
    assert shipped == default_settings(), "regenerate presets/default.json from fploopd.spec.default_settings()"
    assert tuple(shipped) == SETTINGS_FIELDS


def test_every_preset_holds_only_generation_settings():
    for preset in (resources.files("fploopd") / "presets").iterdir():
        if preset.name.endswith(".json"):
            GenerationSettings.model_validate(json.loads(preset.read_text(encoding="utf-8")))


NAMES = [
    ("cat.png", True), ("a b.mp4", True), ("x", True), ("ü.png", True), ("cat.", True), ("a..b", True),
    ("", False), (".", False), ("..", False), (".hidden.png", False), ("a/b.png", False), ("a\\b.png", False),
    ("/etc/passwd", False), ("a\x00b", False), ("../x.png", False), ("x" * 255, True), ("x" * 256, False),
    ("cat.png\n", True),
]  # fmt: skip


@pytest.mark.parametrize(("name", "bare"), NAMES)
def test_one_bare_name_rule_for_media_fields_and_job_names(name, bare):
    assert is_bare_name(name) is bare
    try:
        JobSpec(prompt="", image=name)
        accepted = True
    except ValidationError:
        accepted = False
    assert accepted is bare


def test_every_pipeline_has_a_runner():
    from fploopd.pipelines.runners import RUNNERS

    assert set(RUNNERS) == set(PIPELINES)
