"""Where the weights come from: the tiny family, local folders, HF caches, FramePack installs, the Hub.

Every component is looked for in each place, in order, in these layouts:

- ``<place>/<org>/<name>/<subfolder>`` (the tiny family's layout, and a plain folder of weights);
- ``<place>/models--<org>--<name>/snapshots/<rev>/<subfolder>`` (an HF hub cache), also under
  ``<place>/hub/`` (an HF_HOME) and ``<place>/hf_download/hub/`` (a FramePack install).

A component counts only when complete: its config or tokenizer files and every weight file (for a
sharded checkpoint, the index and each shard it lists). When something is missing, one error says
what was found, what is missing, where it was looked for and how to fix it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from loguru import logger

from fploopd.engine.layout import COMPONENTS, REQUIRED, Component, Kind, component_dir
from fploopd.engine.tiny import ensure_tiny
from fploopd.errors import ModelError


@dataclass(frozen=True)
class ModelPaths:
    """One complete set of component folders, ready for ``load_components``."""

    transformer: Path
    text_encoder: Path
    tokenizer: Path
    text_encoder_2: Path
    tokenizer_2: Path
    vae: Path
    image_encoder: Path
    feature_extractor: Path
    transformer_f1: Path | None = None
    source: str = ""  # e.g. "tiny (/home/u/.cache/fploopd/tiny-v3)" or "auto"
    origins: tuple[tuple[str, str], ...] = field(default=(), compare=False)  # (component, place label)

    def path(self, name: str) -> Path | None:
        return getattr(self, name)

    def origin(self, name: str) -> str:
        return dict(self.origins).get(name, self.source)


@dataclass(frozen=True)
class Place:
    label: str  # why we look here: "--search", "FPLOOPD_MODELS", "HF cache ($HF_HOME)", ...
    path: Path

    def __str__(self) -> str:
        return f"{self.path} ({self.label})"


@dataclass
class Lookup:
    """The outcome of looking for one component."""

    component: Component
    path: Path | None = None
    place: Place | None = None
    problems: list[str] = field(default_factory=list)  # incomplete folders seen on the way


def hf_cache_dir() -> tuple[Path, str]:
    """The HF hub cache huggingface_hub would use now, and the variable that decided it."""
    env = os.environ
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if env.get(var):
            return Path(env[var]).expanduser(), f"${var}"
    if env.get("HF_HOME"):
        return Path(env["HF_HOME"]).expanduser() / "hub", "$HF_HOME/hub"
    if env.get("XDG_CACHE_HOME"):
        return Path(env["XDG_CACHE_HOME"]).expanduser() / "huggingface" / "hub", "$XDG_CACHE_HOME/huggingface/hub"
    return Path.home() / ".cache" / "huggingface" / "hub", "default"


def _env_paths(var: str) -> list[Path]:
    return [Path(p).expanduser().absolute() for p in os.environ.get(var, "").split(os.pathsep) if p.strip()]


def auto_places(search: list[Path] | None = None) -> list[Place]:
    """``auto``'s search order: ``search``, $FPLOOPD_MODELS, the HF cache, $FPLOOPD_FRAMEPACK_DIRS."""
    places = [Place("--search", Path(p).expanduser().absolute()) for p in search or []]
    places += [Place("FPLOOPD_MODELS", p) for p in _env_paths("FPLOOPD_MODELS")]
    hub, why = hf_cache_dir()
    places.append(Place(f"HF cache, {why}", hub))
    places += [Place("FramePack install, FPLOOPD_FRAMEPACK_DIRS", p) for p in _env_paths("FPLOOPD_FRAMEPACK_DIRS")]
    return places


def _snapshots(repo_dir: Path) -> list[Path]:
    """A cached repo's snapshots: the one refs/main names first, then the others by name."""
    snaps = repo_dir / "snapshots"
    if not snaps.is_dir():
        return []
    others = sorted(p for p in snaps.iterdir() if p.is_dir())
    ref = repo_dir / "refs" / "main"
    try:
        main = snaps / ref.read_text(encoding="utf-8").strip()
    except OSError:
        return others
    return [main] + [p for p in others if p != main] if main.is_dir() else others


def candidate_dirs(base: Path, component: Component) -> Iterator[Path]:
    """Every folder under ``base`` that may hold ``component``, in order of preference."""
    org, name = component.repo.split("/")
    yield component_dir(base, component.name)
    for hub in (base, base / "hub", base / "hf_download" / "hub"):
        for snap in _snapshots(hub / f"models--{org}--{name}"):
            yield snap / component.subfolder if component.subfolder else snap


def check_component(folder: Path, kind: Kind) -> str | None:
    """None when ``folder`` holds a complete component of ``kind``, else what is wrong with it."""
    if not folder.is_dir():
        return "no folder"
    needed = {
        "model": ["config.json"],
        "llama_tokenizer": ["tokenizer.json", "tokenizer_config.json"],
        "clip_tokenizer": ["vocab.json", "merges.txt"],
        "preprocessor": ["preprocessor_config.json"],
    }[kind]
    absent = [n for n in needed if not _nonempty(folder / n)]
    if absent:
        return f"{', '.join(absent)} missing"
    return _check_weights(folder) if kind == "model" else None


def _nonempty(path: Path) -> bool:
    # is_file follows links, so an HF cache link to a missing blob counts as missing.
    try:
        return path.is_file() and path.stat().st_size > 0
    except OSError:
        return False


def _check_weights(folder: Path) -> str | None:
    indexes = sorted(folder.glob("*.safetensors.index.json"))
    if indexes:
        try:
            weight_map = json.loads(indexes[0].read_text(encoding="utf-8"))["weight_map"]
            shards = sorted(set(weight_map.values()))
        except (OSError, ValueError, KeyError, AttributeError) as exc:
            return f"{indexes[0].name} unreadable ({exc})"
        absent = [s for s in shards if not _nonempty(folder / s)]
        if absent:
            return f"{len(absent)} of {len(shards)} shards listed in {indexes[0].name} missing: {', '.join(absent)}"
        return None
    if any(_nonempty(p) for p in folder.glob("*.safetensors")):
        return None
    return "no *.safetensors weights"


def locate(places: list[Place], names: list[str] | None = None) -> dict[str, Lookup]:
    """Look for each component in every place, in order; the first complete folder wins."""
    out: dict[str, Lookup] = {}
    for name in names or list(COMPONENTS):
        found = Lookup(COMPONENTS[name])
        for place in places:
            for folder in candidate_dirs(place.path, found.component):
                problem = check_component(folder, found.component.kind)
                if problem is None:
                    found.path, found.place = folder.absolute(), place
                    break
                if problem != "no folder":
                    found.problems.append(f"{folder}: {problem}")
            if found.path is not None:
                break
        out[name] = found
    return out


def places_for(model: str | Path, search: list[Path] | None = None) -> tuple[list[Place], str]:
    """The places a ``--model`` value means, and a description of the source."""
    text = str(model)
    if text == "tiny":
        root = ensure_tiny()
        return [Place("tiny", root)], f"tiny ({root})"
    if text == "auto":
        return auto_places(search), "auto"
    if text.startswith("random:"):
        raise ModelError(
            f"{text} is random weights for benchmarks, built by the daemon's workers (fploopd run) and fploopd bench; "
            "this command needs files: pass --model tiny, --model auto or a folder holding the FramePack weights",
            field="model",
        )
    path = Path(model).expanduser().absolute()
    if not path.is_dir():
        raise ModelError(
            f"model folder {path} does not exist; pass --model tiny, --model auto, or a folder holding the "
            "FramePack weights (<org>/<name>/<subfolder>, an HF cache, or a FramePack install)",
            field="model",
        )
    return [Place("--model", path)], f"folder {path}"


def resolve(
    model: str | Path,
    *,
    allow_download: bool = False,
    search: list[Path] | None = None,
    f1: bool = False,
) -> ModelPaths:
    """Find every component ``model`` names (``f1``: the F1 transformer is required too)."""
    places, source = places_for(model, search)
    required = list(REQUIRED) + (["transformer_f1"] if f1 else [])
    found = locate(places)
    missing = [n for n in required if found[n].path is None]
    if missing and allow_download and str(model) != "tiny":
        hub = download([COMPONENTS[n] for n in missing])
        places = places + [Place("downloaded", hub)]
        found.update(locate(places, missing))
        missing = [n for n in required if found[n].path is None]
    if missing:
        raise ModelError(_report(model, places, found, missing), field="model")
    paths = {n: found[n].path for n in COMPONENTS}
    origins = tuple((n, str(found[n].place)) for n in COMPONENTS if found[n].place is not None)
    logger.debug("model {} resolved: {}", model, {n: str(p) for n, p in paths.items()})
    return ModelPaths(**paths, source=source, origins=origins)  # type: ignore[arg-type]


def download(components: list[Component]) -> Path:
    """Fetch just these components' files from the Hub into the HF cache; return the cache."""
    from huggingface_hub import snapshot_download

    hub, _ = hf_cache_dir()
    patterns: dict[str, list[str]] = {}
    for c in components:
        patterns.setdefault(c.repo, []).extend(c.allow_patterns)
    for repo, allow in patterns.items():
        logger.info("downloading {} ({}) into {}", repo, ", ".join(allow), hub)
        snapshot_download(repo, allow_patterns=allow, cache_dir=hub)
    return hub


def describe(model: str | Path, *, search: list[Path] | None = None) -> list[dict[str, str | None]]:
    """One row per component for ``fploopd models``: found or missing, where, and from which place."""
    places, _ = places_for(model, search)
    rows = []
    for name, lk in locate(places).items():
        rows.append(
            {
                "component": name,
                "status": "found" if lk.path else ("absent" if lk.component.optional else "missing"),
                "path": str(lk.path) if lk.path else None,
                "source": str(lk.place.label) if lk.place else None,
                "repo": lk.component.hub_path,
                "detail": "; ".join(lk.problems),
            }
        )
    return rows


def _report(model: str | Path, places: list[Place], found: dict[str, Lookup], missing: list[str]) -> str:
    lines = [f"FramePack weights incomplete for --model {model}: {len(missing)} component(s) missing."]
    for name, lk in found.items():
        if lk.path is not None:
            lines.append(f"  found    {name:<17} {lk.path}")
        elif name in missing:
            c = lk.component
            org, repo_name = c.repo.split("/")
            sub = f"/{c.subfolder}" if c.subfolder else ""
            lines.append(
                f"  MISSING  {name:<17} wanted {c.hub_path} (as <place>/{c.repo}{sub} "
                f"or models--{org}--{repo_name}/snapshots/*{sub})"
            )
            lines += [f"           incomplete: {p}" for p in lk.problems]
    lines.append("Looked in, in order (layouts <org>/<name>/<sub>, models--<org>--<name>/snapshots/*, hub/, hf_download/hub/):")
    lines += [f"  {p}" for p in places]
    repos: dict[str, list[str]] = {}
    for name in missing:
        c = COMPONENTS[name]
        repos.setdefault(c.repo, []).extend(c.allow_patterns if c.subfolder else [])
    fetch = [f"hf download {repo}" + "".join(f' --include "{p}"' for p in pats) for repo, pats in repos.items()]
    lines.append(
        "Fix: point --model or FPLOOPD_MODELS at a folder that holds them (or add it with --search), "
        "or set FPLOOPD_FRAMEPACK_DIRS to a FramePack install; or allow downloads "
        "(allow_download = true in fploopd.toml, or `fploopd models --download`), "
        "or fetch them yourself: " + "; ".join(fetch)
    )
    return "\n".join(lines)
