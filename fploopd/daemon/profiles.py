"""Profiles: named sets of generation settings that sidecars pick with ``"profile": "fast"``.

``profiles/NAME.json`` in the root (user-editable, read at every claim so edits apply without a
restart) wins over the preset of the same name shipped in ``fploopd/presets/``. A profile holds
only ``GenerationSettings`` fields; the sidecar's own values override it.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from fploopd.daemon.jsonfile import read_json_object
from fploopd.daemon.names import is_text
from fploopd.daemon.validation import translate
from fploopd.errors import InputError
from fploopd.spec import SETTINGS_FIELDS, GenerationSettings

MAX_PROFILE_BYTES = 64 * 1024
DEFAULT_PROFILE = "default"


def shipped_presets() -> dict[str, bytes]:
    """The presets in the package, name -> file content."""
    folder = resources.files("fploopd") / "presets"
    return {p.name[:-5]: p.read_bytes() for p in folder.iterdir() if p.name.endswith(".json")}


class Profiles:
    def __init__(self, user_dir: Path | None) -> None:
        self.user_dir = user_dir

    def names(self) -> list[str]:
        names = set(shipped_presets())
        if self.user_dir is not None and self.user_dir.is_dir():
            # A stray file whose name is not text (no sidecar could ask for it) must not garble messages.
            names |= {p.stem for p in self.user_dir.glob("*.json") if not p.name.startswith(".") and is_text(p.stem)}
        return sorted(names)

    def values(self, name: str, *, file: str) -> dict[str, Any]:
        """The settings profile ``name`` sets (only those it sets). ``file`` names the asking sidecar."""
        user = self.user_dir / f"{name}.json" if self.user_dir is not None else None
        if user is not None and user.is_file():
            label = f"profiles/{user.name}"
            raw = read_json_object(user, MAX_PROFILE_BYTES, label)
        else:
            shipped = shipped_presets()
            if name not in shipped:
                raise InputError(
                    f"{file}: no profile '{name}' (profiles: {', '.join(self.names())})", field="profile", file=file
                )
            label = f"preset {name}"
            raw = json.loads(shipped[name])
        try:
            settings = GenerationSettings.model_validate(raw)
        except ValidationError as exc:
            unknown = [str(e["loc"][0]) for e in exc.errors() if e["type"] == "extra_forbidden"]
            hint = f"a profile holds only generation settings ({', '.join(SETTINGS_FIELDS)}); " if unknown else ""
            raise translate(exc, label, hint) from None
        return settings.model_dump(exclude_unset=True)
