"""Sidecar validation: every error names the sidecar, the field and what was expected."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from fploopd.daemon.profiles import Profiles
from fploopd.daemon.sidecar import companions_of_bad_sidecar, effective_spec, locate_media, read_sidecar
from fploopd.errors import InputError


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "profiles").mkdir()
    loop = tmp_path / "inbox" / "loop"
    loop.mkdir(parents=True)
    (loop / "cat.png").write_bytes(b"png")
    return loop


def spec_of(folder: Path, raw: object, pipeline: str | None = "loop", name: str = "cat.json"):
    path = folder / name
    path.write_text(raw if isinstance(raw, str) else json.dumps(raw))
    profiles = Profiles(folder.parent.parent / "profiles")
    return effective_spec(read_sidecar(path, 65536), path, pipeline, profiles)


def error_of(folder: Path, raw: object, pipeline: str | None = "loop") -> InputError:
    with pytest.raises(InputError) as exc:
        spec_of(folder, raw, pipeline)
    assert exc.value.file is not None
    return exc.value


def test_good_sidecar_gets_pipeline_from_folder_and_media_by_stem(folder: Path) -> None:
    spec = spec_of(folder, {"prompt": "a cat", "steps": 4})
    assert spec.pipeline == "loop" and spec.steps == 4 and spec.prompt == "a cat"
    media = locate_media(spec, folder / "cat.json")
    assert media.found == {"image": folder / "cat.png"} and not media.missing


def test_unknown_key_is_named(folder: Path) -> None:
    err = error_of(folder, {"promt": "a cat"})
    assert err.field == "promt" and "unknown key 'promt'" in err.message and "cat.json" in err.message


def test_out_of_range_names_field_value_and_bound(folder: Path) -> None:
    err = error_of(folder, {"prompt": "", "steps": 1000})
    assert err.field == "steps" and "1000" in err.message and "100" in err.message


def test_union_field_reports_the_constraint(folder: Path) -> None:
    err = error_of(folder, {"prompt": "", "teacache": 2.0})
    assert err.field == "teacache" and "less than or equal to 1" in err.message


def test_wrong_type_is_refused_not_coerced(folder: Path) -> None:
    assert error_of(folder, {"prompt": "", "steps": "8"}).field == "steps"


@pytest.mark.parametrize("value", ["../x.png", "/etc/passwd", "sub/x.png", ".hidden.png", "..", "a\\b.png"])
def test_media_must_be_a_bare_name(folder: Path, value: str) -> None:
    err = error_of(folder, {"prompt": "", "image": value})
    assert err.field == "image" and "bare file name" in err.message


def test_symlink_leading_out_is_refused(folder: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside.png"
    outside.write_bytes(b"secret")
    os.symlink(outside, folder / "link.png")
    spec = spec_of(folder, {"prompt": "", "image": "link.png"})
    with pytest.raises(InputError) as exc:
        locate_media(spec, folder / "cat.json")
    assert exc.value.field == "image" and "leads out" in exc.value.message


def test_non_regular_file_is_refused(folder: Path) -> None:
    (folder / "dir.png").mkdir()
    spec = spec_of(folder, {"prompt": "", "image": "dir.png"})
    with pytest.raises(InputError, match="not a regular file"):
        locate_media(spec, folder / "cat.json")


def test_missing_media_is_reported_not_raised(folder: Path) -> None:
    spec = spec_of(folder, {"prompt": "", "image": "later.png"})
    media = locate_media(spec, folder / "cat.json")
    assert media.missing == {"image": "later.png"} and not media.found


def test_ambiguous_default_media(folder: Path) -> None:
    (folder / "cat.jpg").write_bytes(b"jpg")
    spec = spec_of(folder, {"prompt": ""})
    with pytest.raises(InputError, match="several files match"):
        locate_media(spec, folder / "cat.json")


def test_pipeline_required_in_bare_inbox_and_must_agree_with_folder(folder: Path) -> None:
    assert error_of(folder, {"prompt": ""}, pipeline=None).field == "pipeline"
    assert error_of(folder, {"prompt": "", "pipeline": "connect"}, pipeline="loop").field == "pipeline"
    assert spec_of(folder, {"prompt": "", "pipeline": "loop"}, pipeline=None).pipeline == "loop"


def test_media_field_of_another_pipeline(folder: Path) -> None:
    assert error_of(folder, {"prompt": "", "video": "cat.mp4"}).field == "video"


@pytest.mark.parametrize(
    ("text", "what"),
    [("{bad", "not valid JSON"), ("[1, 2]", "JSON object"), ('{"prompt": "a", "prompt": "b"}', "appears twice"), (b"\xff\xfe", "UTF-8")],
)
def test_unparsable_sidecars(folder: Path, text: str | bytes, what: str) -> None:
    path = folder / "cat.json"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(InputError, match=what):
        read_sidecar(path, 65536)


def test_size_cap(folder: Path) -> None:
    path = folder / "cat.json"
    path.write_text(json.dumps({"prompt": "x" * 5000}))
    with pytest.raises(InputError, match="limit"):
        read_sidecar(path, 1024)


def test_bom_is_accepted(folder: Path) -> None:
    path = folder / "cat.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps({"prompt": "a"}).encode())
    assert read_sidecar(path, 65536) == {"prompt": "a"}


def test_profile_values_are_overridden_by_the_sidecar(folder: Path) -> None:
    spec = spec_of(folder, {"prompt": "", "profile": "fast", "steps": 5})
    assert spec.steps == 5 and spec.teacache == 0.25  # steps from the sidecar, teacache from "fast"
    assert spec_of(folder, {"prompt": "", "profile": "quality"}).steps == 32


def test_user_profile_wins_over_shipped_preset(folder: Path) -> None:
    (folder.parent.parent / "profiles" / "fast.json").write_text(json.dumps({"steps": 7}))
    spec = spec_of(folder, {"prompt": "", "profile": "fast"})
    assert spec.steps == 7 and spec.teacache is False  # the user's file replaces the preset


def test_profile_errors_name_the_profile_file(folder: Path) -> None:
    (folder.parent.parent / "profiles" / "mine.json").write_text(json.dumps({"prompt": "no", "steps": 3}))
    err = error_of(folder, {"prompt": "", "profile": "mine"})
    assert err.file == "profiles/mine.json" and err.field == "prompt" and "generation settings" in err.message
    (folder.parent.parent / "profiles" / "mine.json").write_text(json.dumps({"steps": 300}))
    err = error_of(folder, {"prompt": "", "profile": "mine"})
    assert err.file == "profiles/mine.json" and err.field == "steps"


def test_unknown_profile(folder: Path) -> None:
    err = error_of(folder, {"prompt": "", "profile": "nope"})
    assert err.field == "profile" and "default, fast, quality" in err.message


def test_bad_sidecar_takes_named_media_else_files_sharing_its_stem(folder: Path, tmp_path: Path) -> None:
    (folder / "other.png").write_bytes(b"o")
    (folder / "cat_head.mp4").write_bytes(b"h")
    assert companions_of_bad_sidecar(folder / "cat.json", {"image": "other.png"}) == [folder / "other.png"]
    assert companions_of_bad_sidecar(folder / "cat.json", None) == [folder / "cat.png", folder / "cat_head.mp4"]
    # Never anything outside the folder, never a folder.
    (folder / "sub").mkdir()
    assert companions_of_bad_sidecar(folder / "cat.json", {"image": "../outside.png", "video": "sub"}) == [folder / "cat.png", folder / "cat_head.mp4"]
