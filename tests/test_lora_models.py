"""``fploopd models`` lists the LoRAs of ``<root>/loras`` (or ``--loras DIR``): format, rank, modules."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from fploopd.cli import main
from fploopd.engine.lora_testdata import block_linears, tiny_transformer_meta, write_tiny_lora


@pytest.fixture
def root(tmp_path: Path) -> Path:
    loras = tmp_path / "root" / "loras"
    loras.mkdir(parents=True)
    write_tiny_lora(loras / "musubi.safetensors", "musubi", rank=4)
    write_tiny_lora(loras / "hunyuan.safetensors", "hunyuan", rank=8)
    write_tiny_lora(loras / "loha.safetensors", "loha", rank=2)
    save_file({"lora_te1_text_model_fc1.lora_down.weight": torch.zeros(2, 8),
               "lora_te1_text_model_fc1.lora_up.weight": torch.zeros(8, 2)}, str(loras / "text.safetensors"))  # fmt: skip
    (loras / "old.ckpt").write_bytes(b"\x80\x04pickle")
    return tmp_path / "root"


def test_models_lists_the_loras_of_the_root(tiny_root: Path, root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "--model", "tiny", "--root", str(root)]) == 0
    out = capsys.readouterr().out
    assert f"LoRAs in {root / 'loras'}:" in out
    linears = len(block_linears(tiny_transformer_meta()))
    lines = {line.split()[0]: line for line in out.splitlines() if ".safetensors" in line or ".ckpt" in line}
    assert "musubi-tuner/kohya LoRA (FramePack names)" in lines["musubi.safetensors"]
    assert lines["musubi.safetensors"].split()[-2:] == ["4", str(linears)]
    assert "HunyuanVideo names" in lines["hunyuan.safetensors"] and lines["hunyuan.safetensors"].split()[-2:] == ["8", str(linears)]
    assert "LoHa" in lines["loha.safetensors"]
    assert "match no module" in out and "lora_te1_text_model_fc1" in out  # the text encoder LoRA says why
    assert "pickle" in out  # the .ckpt too


def test_models_json_gives_a_row_per_lora(tiny_root: Path, root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "--model", "tiny", "--loras", str(root / "loras"), "--json"]) == 0
    rows = [r for r in json.loads(capsys.readouterr().out) if r["component"] == "lora"]
    by_name = {Path(r["path"]).name: r for r in rows}
    assert set(by_name) == {"musubi.safetensors", "hunyuan.safetensors", "loha.safetensors", "text.safetensors", "old.ckpt"}
    assert by_name["musubi.safetensors"]["status"] == "ok" and by_name["musubi.safetensors"]["rank"] == 4
    assert by_name["text.safetensors"]["status"] == "error" and by_name["old.ckpt"]["status"] == "error"


def test_no_loras_folder_lists_nothing(tiny_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "--model", "tiny", "--root", str(tmp_path)]) == 0
    assert "LoRAs" not in capsys.readouterr().out


def test_models_lists_the_lora_dirs_of_the_settings_too(tiny_root: Path, root: Path, tmp_path: Path, capsys) -> None:
    extra = tmp_path / "musubi-output"
    extra.mkdir()
    write_tiny_lora(extra / "trained.safetensors", "musubi", rank=4)
    (root / "fploopd.toml").write_text(f"lora_dirs = [{json.dumps(str(extra))}]\n")
    assert main(["models", "--model", "tiny", "--root", str(root), "--json"]) == 0
    rows = [r for r in json.loads(capsys.readouterr().out) if r["component"] == "lora"]
    assert str(extra / "trained.safetensors") in {r["path"] for r in rows} and len(rows) == 6
