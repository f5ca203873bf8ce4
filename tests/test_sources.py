"""Finding the weights: tiny, HF caches, FramePack installs, folders; one clear error when incomplete."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

from fploopd.cli import main
from fploopd.engine import sources
from fploopd.engine.sources import COMPONENTS, REQUIRED, ModelPaths, component_dir, describe, resolve
from fploopd.errors import ModelError

REV = "0123456789abcdef0123456789abcdef01234567"
SHARD_2 = "diffusion_pytorch_model-00002-of-00003.safetensors"


@pytest.fixture
def clean_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No model source from the machine running the tests: an empty HF cache, no extra folders."""
    for var in ("FPLOOPD_MODELS", "FPLOOPD_FRAMEPACK_DIRS", "HF_HOME", "HUGGINGFACE_HUB_CACHE", "XDG_CACHE_HOME"):
        monkeypatch.delenv(var, raising=False)
    empty = tmp_path / "empty-hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(empty))
    return empty


def make_hf_cache(tiny_root: Path, hub: Path, *, links: bool = True) -> None:
    """The tiny family as an HF hub cache: blobs named by hash, snapshot links, refs/main."""
    repos = sorted({c.repo for c in COMPONENTS.values()})
    for repo in repos:
        org, name = repo.split("/")
        repo_dir = hub / f"models--{org}--{name}"
        src = tiny_root / org / name
        for f in sorted(p for p in src.rglob("*") if p.is_file()):
            dst = repo_dir / "snapshots" / REV / f.relative_to(src)
            dst.parent.mkdir(parents=True, exist_ok=True)
            if links:
                blob = repo_dir / "blobs" / hashlib.sha256(f.read_bytes()).hexdigest()
                blob.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(f, blob)
                os.symlink(os.path.relpath(blob, dst.parent), dst)
            else:
                shutil.copyfile(f, dst)
        (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
        (repo_dir / "refs" / "main").write_text(REV)


def test_tiny_resolves_to_the_built_family(tiny_root: Path) -> None:
    paths = resolve("tiny")
    for name in COMPONENTS:
        assert paths.path(name) == component_dir(tiny_root, name).absolute()
    assert "tiny" in paths.source and paths.transformer_f1 is not None


def test_auto_finds_an_hf_cache_named_by_hf_hub_cache(tiny_root: Path, tmp_path: Path, clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hub = tmp_path / "hub"
    make_hf_cache(tiny_root, hub)
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    paths = resolve("auto")
    snapshot = hub / "models--hunyuanvideo-community--HunyuanVideo" / "snapshots" / REV
    assert paths.vae == snapshot / "vae"
    assert paths.transformer == hub / "models--lllyasviel--FramePackI2V_HY" / "snapshots" / REV
    assert "HF_HUB_CACHE" in paths.origin("vae")


def test_auto_finds_the_hf_cache_under_hf_home(tiny_root: Path, tmp_path: Path, clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_hf_cache(tiny_root, tmp_path / "hfhome" / "hub", links=False)
    monkeypatch.delenv("HF_HUB_CACHE")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hfhome"))
    assert resolve("auto").tokenizer.is_relative_to(tmp_path / "hfhome" / "hub")


def test_a_framepack_install_resolves_three_ways(tiny_root: Path, tmp_path: Path, clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    install = tmp_path / "FramePack"
    make_hf_cache(tiny_root, install / "hf_download" / "hub")
    hub = install / "hf_download" / "hub"
    assert resolve(install).vae.is_relative_to(hub)  # --model FOLDER
    assert resolve("auto", search=[install]).vae.is_relative_to(hub)  # --search FOLDER
    monkeypatch.setenv("FPLOOPD_FRAMEPACK_DIRS", os.pathsep.join([str(tmp_path / "nothing-here"), str(install)]))
    paths = resolve("auto")
    assert paths.image_encoder.is_relative_to(hub)
    assert "FPLOOPD_FRAMEPACK_DIRS" in paths.origin("image_encoder")


def test_search_folders_come_before_the_hf_cache(tiny_root: Path, tmp_path: Path, clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_hf_cache(tiny_root, tmp_path / "hub")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("FPLOOPD_MODELS", str(tiny_root))
    assert resolve("auto").vae == component_dir(tiny_root, "vae")
    mine = tmp_path / "mine"
    shutil.copytree(tiny_root, mine)
    assert resolve("auto", search=[mine]).vae == component_dir(mine, "vae")


def test_one_missing_component_gives_one_error_naming_it_and_where(tiny_root: Path, tmp_path: Path, clean_env: Path) -> None:
    folder = tmp_path / "weights"
    shutil.copytree(tiny_root, folder)
    shutil.rmtree(component_dir(folder, "vae"))
    shutil.rmtree(component_dir(folder, "image_encoder"))
    with pytest.raises(ModelError) as err:
        resolve("auto", search=[folder])
    msg = err.value.message
    assert "2 component(s) missing" in msg
    assert "MISSING  vae" in msg and "hunyuanvideo-community/HunyuanVideo/vae" in msg
    assert "MISSING  image_encoder" in msg and "lllyasviel/flux_redux_bfl/image_encoder" in msg
    assert f"found    text_encoder      {component_dir(folder, 'text_encoder')}" in msg
    assert f"{folder} (--search)" in msg and f"{clean_env} (HF cache, $HF_HUB_CACHE)" in msg
    assert 'hf download hunyuanvideo-community/HunyuanVideo --include "vae/*"' in msg
    assert 'hf download lllyasviel/flux_redux_bfl --include "image_encoder/*"' in msg
    assert "FPLOOPD_MODELS" in msg and "--model" in msg


def test_a_missing_shard_makes_the_transformer_missing(tiny_root: Path, tmp_path: Path, clean_env: Path) -> None:
    folder = tmp_path / "weights"
    shutil.copytree(tiny_root, folder)
    (component_dir(folder, "transformer") / SHARD_2).unlink()
    with pytest.raises(ModelError) as err:
        resolve(folder)
    msg = err.value.message
    assert "1 component(s) missing" in msg and "MISSING  transformer" in msg
    assert f"incomplete: {component_dir(folder, 'transformer')}: 1 of 3 shards" in msg and SHARD_2 in msg
    assert "hf download lllyasviel/FramePackI2V_HY" in msg


def test_a_link_to_a_missing_blob_counts_as_missing(tiny_root: Path, tmp_path: Path, clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hub = tmp_path / "hub"
    make_hf_cache(tiny_root, hub)
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    link = hub / "models--lllyasviel--flux_redux_bfl" / "snapshots" / REV / "image_encoder" / "model.safetensors"
    link.resolve().unlink()  # an interrupted download: the snapshot link dangles
    rows = {r["component"]: r for r in describe("auto")}
    assert rows["image_encoder"]["status"] == "missing"
    assert "no *.safetensors weights" in str(rows["image_encoder"]["detail"])
    assert rows["vae"]["status"] == "found"


def test_a_later_snapshot_can_complete_refs_main(tiny_root: Path, tmp_path: Path, clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hub = tmp_path / "hub"
    make_hf_cache(tiny_root, hub, links=False)
    repo = hub / "models--hunyuanvideo-community--HunyuanVideo"
    (repo / "snapshots" / REV).rename(repo / "snapshots" / "older")
    (repo / "snapshots" / REV).mkdir()  # refs/main names a snapshot without the files
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    assert resolve("auto").vae == repo / "snapshots" / "older" / "vae"


def test_nothing_anywhere_lists_every_place(tmp_path: Path, clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FPLOOPD_MODELS", str(tmp_path / "models"))
    with pytest.raises(ModelError) as err:
        resolve("auto")
    msg = err.value.message
    assert f"{len(REQUIRED)} component(s) missing" in msg
    assert all(f"MISSING  {n}" in msg for n in REQUIRED)
    assert f"{tmp_path / 'models'} (FPLOOPD_MODELS)" in msg and str(clean_env) in msg


def test_a_model_folder_that_does_not_exist_is_named() -> None:
    with pytest.raises(ModelError, match="/does-not-exist/weights does not exist"):
        resolve("/does-not-exist/weights")


def test_f1_is_optional_unless_asked_for(tiny_root: Path, tmp_path: Path, clean_env: Path) -> None:
    folder = tmp_path / "weights"
    shutil.copytree(tiny_root, folder)
    shutil.rmtree(component_dir(folder, "transformer_f1"))
    assert resolve(folder).transformer_f1 is None
    with pytest.raises(ModelError, match="MISSING  transformer_f1"):
        resolve(folder, f1=True)
    rows = {r["component"]: r for r in describe(folder)}
    assert rows["transformer_f1"]["status"] == "absent" and rows["transformer"]["status"] == "found"


def test_downloads_fetch_only_the_missing_subfolders(tiny_root: Path, tmp_path: Path, clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub

    folder = tmp_path / "weights"
    shutil.copytree(tiny_root, folder)
    shutil.rmtree(component_dir(folder, "vae"))
    shutil.rmtree(component_dir(folder, "tokenizer_2"))
    calls = []

    def fake_snapshot_download(repo_id: str, *, allow_patterns: list[str], cache_dir: Path) -> str:
        calls.append((repo_id, sorted(allow_patterns), Path(cache_dir)))
        org, name = repo_id.split("/")
        snap = Path(cache_dir) / f"models--{org}--{name}" / "snapshots" / REV
        for pattern in allow_patterns:
            sub = pattern.removesuffix("/*")
            shutil.copytree(tiny_root / org / name / sub, snap / sub)
        return str(snap)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    with pytest.raises(ModelError):
        resolve(folder)  # no download unless allowed
    assert calls == []
    paths = resolve(folder, allow_download=True)
    assert calls == [("hunyuanvideo-community/HunyuanVideo", ["tokenizer_2/*", "vae/*"], clean_env)]
    assert paths.vae.is_relative_to(clean_env) and paths.text_encoder == component_dir(folder, "text_encoder")
    assert "downloaded" in paths.origin("vae")


def test_the_root_transformer_downloads_only_its_weights() -> None:
    assert COMPONENTS["transformer"].allow_patterns == ["config.json", "*.safetensors", "*.safetensors.index.json"]
    assert COMPONENTS["vae"].allow_patterns == ["vae/*"]


def test_describe_rows_for_tiny(tiny_root: Path) -> None:
    rows = describe("tiny")
    assert [r["component"] for r in rows] == list(COMPONENTS)
    assert all(r["status"] == "found" and r["source"] == "tiny" for r in rows)
    assert rows[0]["path"] == str(component_dir(tiny_root, "transformer"))


def test_model_paths_is_frozen(tiny_root: Path) -> None:
    paths = resolve("tiny")
    with pytest.raises(AttributeError):
        paths.vae = Path("/elsewhere")  # type: ignore[misc]
    assert isinstance(paths, ModelPaths) and paths == resolve("tiny")


def test_models_command_lists_tiny(tiny_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "--model", "tiny"]) == 0
    out = capsys.readouterr().out
    for name in COMPONENTS:
        assert name in out
    assert str(component_dir(tiny_root, "vae")) in out and "missing" not in out


def test_models_command_json_and_exit_1_when_missing(tmp_path: Path, clean_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "--model", "auto", "--json", "--search", str(tmp_path)]) == 1
    rows = json.loads(capsys.readouterr().out)
    assert {r["component"] for r in rows if r["status"] == "missing"} == set(REQUIRED)
    assert main(["models"]) == 1
    out = capsys.readouterr().out
    assert "missing: transformer, text_encoder" in out and f"{clean_env} (HF cache, $HF_HUB_CACHE)" in out


def test_check_component_rejects_an_unreadable_index(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors.index.json").write_text("not json")
    assert "unreadable" in str(sources.check_component(tmp_path, "model"))
    (tmp_path / "model.safetensors.index.json").unlink()
    (tmp_path / "model.safetensors").write_bytes(b"")
    assert sources.check_component(tmp_path, "model") == "no *.safetensors weights"  # empty file
