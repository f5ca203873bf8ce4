"""The folders of a root (docs/design.md §2) and the daemon's private state under ``.fploopd/``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# Inbox subfolders that preselect the pipeline; files directly in inbox/ name it in the sidecar.
PIPELINE_FOLDERS = ("loop", "connect", "video2loop")
# Names a producer is still writing: never touched.
TEMP_SUFFIXES = (".part", ".tmp", ".crdownload")
# outbox/latest/ holds each channel's newest loop (fploopd.daemon.latest): no job may take the name.
LATEST_FOLDER = "latest"


def is_temporary_name(name: str) -> bool:
    return name.startswith((".", "~")) or name.lower().endswith(TEMP_SUFFIXES)


@dataclass(frozen=True)
class Layout:
    root: Path

    @property
    def inbox(self) -> Path:
        return self.root / "inbox"

    @property
    def outbox(self) -> Path:
        return self.root / "outbox"

    @property
    def latest(self) -> Path:
        return self.outbox / LATEST_FOLDER

    @property
    def failed(self) -> Path:
        return self.root / "failed"

    @property
    def archive(self) -> Path:
        return self.root / "archive"

    @property
    def profiles(self) -> Path:
        return self.root / "profiles"

    @property
    def loras(self) -> Path:
        """LoRA files (safetensors) that profiles and sidecars name by bare file name."""
        return self.root / "loras"

    @property
    def progress(self) -> Path:
        """While a job runs: ``<job-name>.webp`` (latent preview) and ``<job-name>.json`` (progress)."""
        return self.root / "progress"

    def progress_webp(self, name: str) -> Path:
        return self.progress / f"{name}.webp"

    def progress_json(self, name: str) -> Path:
        return self.progress / f"{name}.json"

    @property
    def status_json(self) -> Path:
        """The queue as ``status --json`` objects plus the daemon, for people who only see the share."""
        return self.root / "status.json"

    @property
    def status_html(self) -> Path:
        """A self-refreshing page of ``status_json`` that reads nothing but itself."""
        return self.root / "status.html"

    @property
    def state(self) -> Path:
        return self.root / ".fploopd"

    @property
    def journal(self) -> Path:
        return self.state / "journal.sqlite3"

    @property
    def lock(self) -> Path:
        return self.state / "daemon.lock"

    @property
    def logs(self) -> Path:
        return self.state / "logs"

    @property
    def work(self) -> Path:
        return self.state / "work"

    @property
    def caches(self) -> Path:
        """Compiled kernels (``compile_cache``, ``attention_cache``): rebuilt when deleted."""
        return self.state / "cache"

    @property
    def compile_cache(self) -> Path:
        """torch.compile's kernels and graphs, kept across restarts and reboots (unlike /tmp)."""
        return self.caches / "torch"

    @property
    def attention_cache(self) -> Path:
        """FlashAttention 4's compiled CuTe kernels (flash-attn-4's persistent JIT cache)."""
        return self.caches / "flash_attn_cute"

    def job_dir(self, job_id: str) -> Path:
        return self.work / job_id

    def inputs_dir(self, job_id: str) -> Path:
        """The job's original files, moved here by the claim; later renamed whole into archive/ or failed/."""
        return self.work / job_id / "inputs"

    def out_dir(self, job_id: str) -> Path:
        """Outputs being made; renamed whole into outbox/<job-name>/ on success."""
        return self.work / job_id / "out"

    def checkpoint_dir(self, job_id: str) -> Path:
        """Section checkpoints (the pipeline's ``work_dir``); removed after a successful delivery."""
        return self.work / job_id / "state"

    def user_folders(self) -> list[Path]:
        """The folders of docs/design.md §2 that users see: inbox/ (and its pipeline folders), outbox/, ..."""
        return [self.inbox, *(self.inbox / p for p in PIPELINE_FOLDERS), self.outbox, self.failed, self.archive, self.profiles, self.loras, self.progress]

    def inbox_folders(self) -> list[tuple[Path, str | None]]:
        """Folders to scan, each with the pipeline it preselects (None: the sidecar says)."""
        return [(self.inbox, None)] + [(self.inbox / p, p) for p in PIPELINE_FOLDERS]

    def rel(self, path: Path) -> str:
        """``path`` relative to the root, with forward slashes (as the journal stores it)."""
        return Path(path).relative_to(self.root).as_posix()

    def abs(self, rel: str) -> Path:
        return self.root / rel
