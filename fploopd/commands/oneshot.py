"""What the one-shot commands (generate, loop, connect, video2loop) share.

Their options are the sidecar's fields, generated from ``JobSpec.model_fields`` so the two can never
drift apart, and the values are validated the way a sidecar's are (profile first, same messages).
A run keeps its section checkpoints in ``<out>/.fploopd-work/<name>``: re-running the same command
after an interruption resumes there (with the same seeds) and the folder goes once the job is done.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, TextIO, Union, get_args, get_origin

from fploopd.cli import add_model_options, add_root_option
from fploopd.spec import JobSpec, PathsOption, inapplicable_error, option_of, pipelines_of

if TYPE_CHECKING:
    from fploopd.engine.lora import LoraFile
    from fploopd.pipelines.progress import Progress

WORK_FOLDER = ".fploopd-work"
# The fields that are not options (the spec's fields without an ``Option``): the command decides
# the pipeline and takes the media as arguments; a one-shot run has no queue for a priority to order.
NOT_OPTIONS = frozenset(f for f in JobSpec.model_fields if option_of(f) is None)


# --- options from the spec --------------------------------------------------------------------


def _strip(tp: Any) -> Any:
    while get_origin(tp) is Annotated:
        tp = get_args(tp)[0]
    return tp


def _bool_or_number(text: str) -> bool | float:
    low = text.strip().lower()
    if low in ("on", "true", "yes"):
        return True
    if low in ("off", "false", "no"):
        return False
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected on, off or a number, got {text!r}") from None


def _list_of(convert: Callable[[str], Any]) -> Callable[[str], list[Any]]:
    def parse(text: str) -> list[Any]:
        return [convert(part.strip()) for part in text.split(",") if part.strip()]

    parse.__name__ = "comma list"
    return parse


def lora_option(text: str) -> tuple[Path, float]:
    """``FILE[:SCALE]``: any path, scale 1.0 when not given. A path may hold colons itself: only a
    last part that reads as a number is the scale."""
    path, sep, scale = text.rpartition(":")
    if sep and path:
        try:
            return Path(path), float(scale)
        except ValueError:
            pass  # a colon in the file's own name
    return Path(text), 1.0


lora_option.__name__ = "FILE[:SCALE]"
# The converters of the spec's path options (``PathsOption``), by field.
PATH_OPTIONS: dict[str, Callable[[str], Any]] = {"loras": lora_option}


def option_kind(annotation: Any) -> tuple[str, Callable[[str], Any] | None, str | None]:
    """(kind, converter, metavar) for a field type: kind is "flag" or "value"."""
    tp = _strip(annotation)
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        members = [_strip(a) for a in get_args(tp) if a is not type(None)]
        if len(members) == 1:
            return option_kind(members[0])
        if set(members) == {bool, float}:
            return "value", _bool_or_number, "on|off|N"
        raise TypeError(f"no command-line form for {annotation!r}")
    if tp is bool:
        return "flag", None, None
    if tp in (int, float, str):
        return "value", tp, {int: "N", float: "X", str: "TEXT"}[tp]
    if origin is Literal:
        return "value", str, "|".join(map(str, get_args(tp)))
    if origin is list:
        _, convert, metavar = option_kind(get_args(tp)[0])
        return "value", _list_of(convert or str), f"{metavar},..."
    raise TypeError(f"no command-line form for {annotation!r}")


def _shown(default: Any, convert: Callable[[str], Any] | None) -> str:
    """A default as it would be typed: ``off`` for an on/off/number option that is off."""
    if convert is _bool_or_number and default is False:
        return "off"
    return json.dumps(default) if isinstance(default, (list, str)) else str(default)


def option_names(field: str) -> list[str]:
    """``--main-sections``, and the sidecar's own spelling ``--main_sections`` too."""
    names = [f"--{field.replace('_', '-')}"]
    return names + [f"--{field}"] if "_" in field else names


def option_label(field: str) -> str:
    """A field as its option is typed: ``--main-sections``, ``--lora``."""
    option = option_of(field)
    return option.flag if isinstance(option, PathsOption) else option_names(field)[0]


def add_spec_options(
    parser: argparse.ArgumentParser, pipeline: str, aliases: dict[str, list[str]] | None = None
) -> None:
    """One option per sidecar field; every default is None, meaning "not given", so the profile and
    then the spec's own defaults apply exactly as for a sidecar.

    Fields ``pipeline`` does not use stay out of ``--help``; they are still parsed, so that giving
    one is refused with a message that says where it applies (``refuse_unused``), not argparse's
    bare "unrecognized arguments"."""
    aliases = aliases or {}
    group = parser.add_argument_group("job settings (the sidecar's fields; same names, same limits)")
    fields = sorted(JobSpec.model_fields.items(), key=lambda item: item[0] != "prompt")  # the prompt first
    for field, info in fields:
        option = option_of(field)
        if option is None:
            continue
        if isinstance(option, PathsOption):  # paths on disk, where the sidecar names bare files
            help_text = option.help if pipeline in pipelines_of(field) else argparse.SUPPRESS
            group.add_argument(option.flag, dest=f"spec_{field}", type=PATH_OPTIONS[field], action="append",
                               metavar=option.metavar, default=None, help=help_text)  # fmt: skip
            continue
        kind, convert, metavar = option_kind(info.annotation)
        help_text = option.help
        if field != "prompt" and info.default is not None:
            help_text += f" (default: {_shown(info.default, convert)})"
        if pipeline not in pipelines_of(field):
            help_text = argparse.SUPPRESS
        # The sidecar's spelling (--main_sections) is accepted too; flags keep one form each.
        names = aliases.get(field, []) + (option_names(field)[:1] if kind == "flag" else option_names(field))
        dest = f"spec_{field}"
        if kind == "flag":
            group.add_argument(*names, dest=dest, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            group.add_argument(*names, dest=dest, type=convert, metavar=metavar, default=None, help=help_text)


def add_oneshot_options(
    parser: argparse.ArgumentParser, pipeline: str, aliases: dict[str, list[str]] | None = None
) -> None:
    add_root_option(parser)
    add_model_options(parser)
    parser.add_argument("--out", type=Path, default=Path("."), help="output folder (default: the current folder)")
    parser.add_argument("--name", help="job name, the start of every output's name (default: the input's name)")
    add_spec_options(parser, pipeline, aliases)


def given_fields(args: argparse.Namespace) -> dict[str, Any]:
    """The fields given on the command line, as a sidecar would hold them (``--lora`` paths become
    ``loras`` entries by file name; ``lora_paths`` keeps the paths)."""
    given = {k[5:]: v for k, v in vars(args).items() if k.startswith("spec_") and v is not None}
    if "loras" in given:
        given["loras"] = [{"file": path.name, "scale": scale} for path, scale in given["loras"]]
    return given


def lora_paths(args: argparse.Namespace, spec: JobSpec) -> list[Path]:
    """Where each of ``spec.loras`` is: the ``--lora`` paths, else (a profile's loras, by bare
    name) in the daemon's LoRA folders: ``<root>/loras``, then ``lora_dirs``."""
    from fploopd.daemon.layout import Layout
    from fploopd.daemon.loras import lora_folders
    from fploopd.daemon.settings import load_settings
    from fploopd.lorafiles import find_lora

    given = getattr(args, "spec_loras", None)
    if given:
        return [path for path, _ in given]
    root = Path(args.root)
    folders = lora_folders(load_settings(root), Layout(root))
    return [find_lora(entry.file, folders) for entry in spec.loras]


def read_loras(args: argparse.Namespace, spec: JobSpec) -> list[tuple[LoraFile, float]]:
    """The job's LoRA files read and checked (format, bounds) before any model loads."""
    from fploopd.engine.lora import load_lora

    return [(load_lora(path), entry.scale) for path, entry in zip(lora_paths(args, spec), spec.loras)]


def refuse_unused(given: dict[str, Any], pipeline: str) -> None:
    """Options the command's pipeline would ignore are an error naming them as they were typed."""

    def typed(field: str) -> str:
        name = option_names(field)[0]
        return name.replace("--", "--no-", 1) if given[field] is False else name

    error = inapplicable_error(given, pipeline, None, label=typed)
    if error is not None:
        raise error


def spec_from_args(args: argparse.Namespace, pipeline: str) -> JobSpec:
    """The job's spec exactly as a sidecar with these fields would give it: profile, then values."""
    from fploopd.daemon.profiles import Profiles
    from fploopd.daemon.sidecar import effective_spec
    from fploopd.errors import InputError

    raw = given_fields(args)
    refuse_unused(raw, pipeline)
    raw.setdefault("prompt", "")
    profiles_dir = Path(args.root) / "profiles"
    label = "command line"
    profiles = Profiles(profiles_dir if profiles_dir.is_dir() else None)
    try:
        return effective_spec(raw, Path(label), pipeline, profiles)  # --lora replaces the profile's loras, as a sidecar's would
    except InputError as exc:
        # The sidecar's message, with each field named as the option that sets it.
        def option(match: re.Match[str]) -> str:
            field = match.group(2)
            known = field in JobSpec.model_fields and field not in NOT_OPTIONS
            return f"{match.group(1)}{option_label(field) if known else field}: "

        message = re.sub(r"(^|; )(\w+): ", option, exc.message.removeprefix(f"{label}: "))
        raise InputError(message, field=exc.field) from None


# --- progress -------------------------------------------------------------------------------


def render(p: Progress, elapsed: float, width: int = 20) -> str:
    """One status line: generation, phase, section i/n, step j/k with a bar (or the phase's count:
    "decode 3/8 windows"), elapsed time."""
    parts = [f"[{p.generation}/{p.generations}]"] if p.generations > 1 else []
    parts.append(f"{p.phase:<6}")
    if p.phase == "sample" and p.sections:
        parts.append(f"section {p.section}/{p.sections}")
        if p.steps:
            parts.append(f"step {p.step}/{p.steps}")
            done = ((p.section - 1) * p.steps + p.step) / (p.sections * p.steps)
            filled = round(done * width)
            parts.append("[" + "#" * filled + "." * (width - filled) + "]")
    elif p.total:
        parts.append(f"{p.done}/{p.total} {p.unit}".rstrip())
    minutes, seconds = divmod(int(elapsed), 60)
    parts.append(f"{minutes}:{seconds:02d}")
    return "  ".join(parts)


class ProgressBar:
    """Feeds on ``run_job``'s progress reports. On a terminal, one line redrawn in place; otherwise
    (a log, a pipe) one line per phase or section, so logs stay short."""

    def __init__(self, stream: TextIO | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.stream = stream or sys.stderr
        self.clock = clock
        self.started = clock()
        self.live = bool(getattr(self.stream, "isatty", lambda: False)())
        self.width = 0
        self.last_key: tuple[Any, ...] | None = None

    def __call__(self, p: Progress) -> None:
        line = render(p, self.clock() - self.started)
        if self.live:
            self.stream.write("\r" + line.ljust(self.width))
            self.width = max(self.width, len(line))
        else:
            key = (p.generation, p.phase, p.section)
            if key == self.last_key:
                return
            self.last_key = key
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.live and self.width:
            self.stream.write("\n")
            self.stream.flush()
            self.width = 0


# --- running --------------------------------------------------------------------------------


def job_name(args: argparse.Namespace, first_input: Path) -> str:
    name = args.name if args.name is not None else first_input.stem
    check_name(name)
    return name


def check_name(name: str) -> None:
    """A job name starts every output's file name: never a folder, never hidden."""
    from fploopd.errors import InputError
    from fploopd.spec import is_bare_name

    if not is_bare_name(name):
        raise InputError(f"--name {name!r} must be a plain file name (no folders, not hidden)", field="name")


def check_inputs(inputs: dict[str, Path]) -> None:
    from fploopd.errors import InputError

    for field, path in inputs.items():
        if not path.is_file():
            raise InputError(f"{path} is not a file", file=path.name, field=field)


def seeds_for(spec: JobSpec, inputs: dict[str, Path], work_dir: Path) -> list[int]:
    """The seeds recorded in ``work_dir`` by an interrupted run of the same job, else new ones.

    Without this a random seed would differ on the re-run and its checkpoints would not apply.
    """
    from fploopd.engine.sections import fingerprint
    from fploopd.fsutil import write_json_atomic
    from fploopd.pipelines.seeds import pick_seeds

    stamp = {k: [str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns] for k, p in sorted(inputs.items())}
    key = fingerprint(spec=spec.model_dump(mode="json"), inputs=stamp)
    record = work_dir / "seeds.json"
    try:
        saved = json.loads(record.read_text(encoding="utf-8"))
        if saved.get("key") == key and len(saved.get("seeds", [])) == spec.count:
            return [int(s) for s in saved["seeds"]]
    except (OSError, ValueError, TypeError, AttributeError):
        pass  # none yet, or unreadable: start afresh
    seeds = pick_seeds(spec)
    write_json_atomic(record, {"key": key, "seeds": seeds})
    return seeds


def earlier_tries(work_dir: Path) -> int:
    """How many runs of this job started before this one and did not finish (interrupted), counted
    in the seed record that ``seeds_for`` keeps; counts this run in."""
    from fploopd.fsutil import write_json_atomic

    record = work_dir / "seeds.json"
    try:
        saved = json.loads(record.read_text(encoding="utf-8"))
        tries = int(saved.get("tries", 0))
    except (OSError, ValueError, TypeError, AttributeError):
        return 0
    write_json_atomic(record, {**saved, "tries": tries + 1})
    return tries


def manifest_name(name: str, seeds: list[int]) -> str:
    """Beside the outputs, named like them: several one-shot jobs may share one output folder."""
    return f"{name}_{seeds[0]}_manifest.json"


def load_model(args: argparse.Namespace) -> Any:
    from fploopd.engine.components import load_components
    from fploopd.engine.sources import resolve

    if "+" in (args.device or ""):  # a device group: this process is rank 0; followers die with it
        from fploopd.daemon.devicegroups import normalize_group
        from fploopd.engine.device_group import DeviceGroup, group_members, model_loader
        from fploopd.errors import FploopdError

        try:
            members = group_members(normalize_group(args.device))
        except ValueError as exc:
            raise FploopdError(f"--device: {exc}", field="device") from None
        group = DeviceGroup.start(members, model_loader(args.model, False))
        comps = load_components(resolve(args.model), device=members[0], vram=args.vram, fp8=bool(args.fp8))
        return group.attach(comps)
    return load_components(resolve(args.model), device=args.device, vram=args.vram, fp8=bool(args.fp8))


def _remove_work(work: Path) -> None:
    """Only checkpoints and the seed record live there; outputs are in the folder above."""
    shutil.rmtree(work, ignore_errors=True)
    try:
        work.parent.rmdir()
    except OSError:
        pass  # other jobs' work is there, or it is already gone


def run_oneshot(args: argparse.Namespace, pipeline: str, inputs: dict[str, Path]) -> int:
    """Validate, load the model, run the job with a progress bar, write the manifest, print the
    output paths."""
    from loguru import logger

    from fploopd.errors import InputError
    from fploopd.pipelines import run_job
    from fploopd.pipelines.manifest import input_entry

    created, started = time.time(), time.monotonic()
    spec = spec_from_args(args, pipeline)
    check_inputs(inputs)
    name = job_name(args, next(iter(inputs.values())))
    out = Path(args.out).absolute()
    work = out / WORK_FOLDER / name
    seeds = seeds_for(spec, inputs, work)
    tries = earlier_tries(work)
    entries = [input_entry(field, path) for field, path in inputs.items()]  # hashed once, here
    hashes = {e["field"]: e["sha256"] for e in entries}
    loras = read_loras(args, spec)
    components = load_model(args)
    loaded = time.monotonic()
    bar = ProgressBar()
    try:
        result = run_job(spec, inputs, out, name=name, seeds=seeds, components=components, work_dir=work,
                         progress=bar, input_hashes=hashes, loras=loras)  # fmt: skip
    except KeyboardInterrupt:
        bar.close()
        print(f"interrupted; run the same command again to resume from {work}", file=sys.stderr)
        raise
    except InputError:
        _remove_work(work)  # the input is at fault: there is nothing to resume
        raise
    finally:
        bar.close()
    timings = {
        "load_s": round(loaded - started, 3),
        "run_s": result.timings.get("total_s", round(time.monotonic() - loaded, 3)),
        "total_s": round(time.monotonic() - started, 3),
    }
    manifest = write_oneshot_manifest(out, name, spec, result, components.identity, entries, timings, tries, created)
    _remove_work(work)
    logger.info(
        "{} done in {:.1f} s (model load {:.1f} s, run {:.1f} s), seeds {}; manifest {}",
        name, timings["total_s"], timings["load_s"], timings["run_s"], ", ".join(map(str, seeds)), manifest.name,
    )  # fmt: skip
    for output in result.outputs:
        print(output.path)
    return 0


def write_oneshot_manifest(
    out: Path,
    name: str,
    spec: JobSpec,
    result: Any,
    model: Any,
    inputs: list[dict[str, Any]],
    timings: dict[str, float],
    attempts: int,
    created: float,
) -> Path:
    """The daemon's manifest, without a job id (no journal holds a one-shot run)."""
    from fploopd.pipelines.manifest import build_manifest, output_entry, write_manifest

    manifest = build_manifest(
        job_id=None,
        name=name,
        pipeline=spec.pipeline,
        spec=spec.model_dump(mode="json"),
        seeds=list(result.seeds),
        model=model,
        inputs=inputs,
        outputs=[output_entry(o, out) for o in result.outputs],
        timings=timings,
        attempts=attempts,
        created_at=created,
        finished_at=time.time(),
    )
    return write_manifest(out, manifest, manifest_name(name, list(result.seeds)))
