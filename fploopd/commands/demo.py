"""``fploopd demo``: make a root, drop a generated picture, run it on the tiny model, print the paths."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the main job out of the box: a sample loop on the tiny model, on the CPU")
    p.add_argument("--root", type=Path, default=Path("fploopd-demo"), help="the root to make and use (default: ./fploopd-demo)")
    p.add_argument("--model", default="tiny", help="'tiny' (default, no download), 'auto' or a folder")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:1")
    p.add_argument("--lora", action="store_true", help="also merge a demo LoRA (made for the tiny model) from the root's loras/")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from fploopd.daemon.control import job_view, open_journal
    from fploopd.daemon.demo import DEMO_SIDECAR, add_demo_lora, drop_demo
    from fploopd.daemon.layout import Layout
    from fploopd.daemon.rootinit import init_root
    from fploopd.daemon.settings import load_settings
    from fploopd.daemon.supervisor import run_daemon

    if args.lora and args.model != "tiny":
        print("fploopd demo: --lora: the demo LoRA is made for the tiny model; use it with --model tiny")
        return 2
    root = args.root.absolute()
    if "fploopd.toml" in init_root(root):
        use_in_settings(root / "fploopd.toml", model=args.model, device=args.device)
    layout = Layout(root)
    extra = {"loras": [add_demo_lora(layout.loras)]} if args.lora else {}
    sidecar = drop_demo(layout.inbox / "loop", extra)
    print(f"dropped {sidecar.with_suffix('.png')} and {sidecar}" + (f" (with the LoRA {layout.loras / extra['loras'][0]['file']})" if extra else ""))
    # The demo's own folder settles fast: the files were written whole, by us.
    settings = load_settings(root, {"model": args.model, "device": args.device, "settle_s": 0.1, "rescan_interval_s": 0.2})
    started = time.monotonic()
    code = run_daemon(settings, once=True)
    journal = open_journal(layout)
    source = layout.rel(sidecar)
    jobs = [j for j in (journal.jobs() if journal else []) if any(i.get("source") == source for i in j.inputs)]
    if code != 0 or not jobs:
        print(f"the demo did not finish (exit {code}); see `fploopd status --root {root}` and {layout.logs}")
        return code or 1
    view = job_view(jobs[-1], layout)
    if view["state"] != "done":
        print(f"the demo job {view['state']}: {(view['error'] or {}).get('error')}; its files are in {view['location']['inputs']}")
        return 1
    print(f"\ndone in {time.monotonic() - started:.1f} s on {args.device} with the {args.model} model:")
    for out in view["outputs"]:
        label = {"1loop": "one seamless loop", "loop": f"{DEMO_SIDECAR['loop_count']}x loop"}.get(out["kind"], out["kind"])
        print(f"  {label:<18} {out['path']}")
    manifest = Path(view["location"]["outputs"]) / "manifest.json"
    print(f"  {'manifest':<18} {manifest}")
    for lora in (json.loads(manifest.read_text(encoding="utf-8"))["model"] or {}).get("loras") or []:
        print(f"  {'LoRA merged':<18} {lora['name']} at {lora['scale']} (sha256 {lora['sha256'][:12]})")
    print(f"  {'original inputs':<18} {view['location']['inputs']}")
    return 0


def use_in_settings(path: Path, **values: str) -> None:
    """A new demo root's fploopd.toml names the demo's model and device, so that `fploopd run` and
    `fploopd doctor` on it use what the demo used (the template has every key commented out)."""
    from fploopd.fsutil import write_bytes_atomic

    text = path.read_text(encoding="utf-8")
    for key, value in values.items():
        text = text.replace(f'# {key} = "auto"', f"{key} = {json.dumps(value)}", 1)
    write_bytes_atomic(path, text.encode())
