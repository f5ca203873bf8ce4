"""The FramePack components and their folder layout: which Hub repository and subfolder holds each.

Shared by the weight lookup (``sources``) and the tiny family's builder (``tiny``), which saves its
files in exactly these layouts.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Kind = Literal["model", "llama_tokenizer", "clip_tokenizer", "preprocessor"]


@dataclass(frozen=True)
class Component:
    name: str
    repo: str  # Hub repo id, "org/name"
    subfolder: str  # "" = the repo's root
    kind: Kind
    optional: bool = False

    @property
    def hub_path(self) -> str:
        return f"{self.repo}/{self.subfolder}" if self.subfolder else self.repo

    @property
    def allow_patterns(self) -> list[str]:
        """What ``snapshot_download`` must fetch for this component, and nothing more."""
        if self.subfolder:
            return [f"{self.subfolder}/*"]
        return ["config.json", "*.safetensors", "*.safetensors.index.json"]


HUNYUAN = "hunyuanvideo-community/HunyuanVideo"
REDUX = "lllyasviel/flux_redux_bfl"
FRAMEPACK = "lllyasviel/FramePackI2V_HY"
FRAMEPACK_F1 = "lllyasviel/FramePack_F1_I2V_HY_20250503"

COMPONENTS: dict[str, Component] = {
    c.name: c
    for c in (
        Component("transformer", FRAMEPACK, "", "model"),
        Component("text_encoder", HUNYUAN, "text_encoder", "model"),
        Component("tokenizer", HUNYUAN, "tokenizer", "llama_tokenizer"),
        Component("text_encoder_2", HUNYUAN, "text_encoder_2", "model"),
        Component("tokenizer_2", HUNYUAN, "tokenizer_2", "clip_tokenizer"),
        Component("vae", HUNYUAN, "vae", "model"),
        Component("image_encoder", REDUX, "image_encoder", "model"),
        Component("feature_extractor", REDUX, "feature_extractor", "preprocessor"),
        Component("transformer_f1", FRAMEPACK_F1, "", "model", optional=True),
    )
}
REQUIRED = tuple(name for name, c in COMPONENTS.items() if not c.optional)


def component_dir(root: Path, name: str) -> Path:
    """``<root>/<org>/<name>/<subfolder>``: where ``name`` lives in the tiny (plain) layout."""
    c = COMPONENTS[name]
    org, repo_name = c.repo.split("/")
    folder = Path(root) / org / repo_name
    return folder / c.subfolder if c.subfolder else folder
