"""Making a root (docs/design.md §2): folders, a commented fploopd.toml, the shipped profiles.

Idempotent and never overwrites: a file that exists is the user's.
"""

from __future__ import annotations

from pathlib import Path

from fploopd.daemon.layout import Layout
from fploopd.daemon.profiles import shipped_presets
from fploopd.daemon.settings import SETTINGS_FILE, SETTINGS_TEMPLATE
from fploopd.fsutil import write_bytes_atomic

PROFILES_README = (
    "Profiles: named generation settings a sidecar picks with \"profile\": \"NAME\" (NAME.json here).\n"
    "Edit them freely; a sidecar's own values override its profile. Shipped: default (FramePack's\n"
    "defaults), fast (16 steps, TeaCache 0.25), quality (32 steps, TeaCache off).\n"
)


def init_root(root: Path) -> list[str]:
    """Create what is missing; returns what was created (relative to ``root``)."""
    layout = Layout(root)
    created: list[str] = []
    for folder in layout.user_folders():
        if not folder.is_dir():
            folder.mkdir(parents=True, exist_ok=True)
            created.append(layout.rel(folder) + "/")
    files = {root / SETTINGS_FILE: SETTINGS_TEMPLATE.encode(), layout.profiles / "README.md": PROFILES_README.encode()}
    files.update({layout.profiles / f"{name}.json": data for name, data in shipped_presets().items()})
    for path, data in files.items():
        if not path.exists():
            write_bytes_atomic(path, data)
            created.append(layout.rel(path))
    return created
