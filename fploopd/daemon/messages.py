"""What the supervisor and a GPU worker say to each other over their Pipe: small frozen dataclasses
(pickled by multiprocessing), so each side reads fields by name. They carry typed values: the job's
spec as a ``JobSpec`` (validated by the supervisor, so the worker never parses it), errors as
``ErrorRecord``s.

Supervisor -> worker: ``RunJob``, ``StopJob``, ``Exit``.
Worker -> supervisor: ``Ready`` or ``Fatal`` once after loading the models; for each job ``Started``
(the job is the worker's now), ``Progress``..., then one of ``Done``, ``Failed``, ``Stopped``;
``Beat`` every ``HEARTBEAT_S`` from a thread of its own; ``Exiting`` before it leaves on its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fploopd.errors import ErrorRecord
from fploopd.spec import JobSpec

# A worker's heartbeat thread sends a Beat this often, whatever its main thread is doing.
HEARTBEAT_S = 2.0


# --- supervisor -> worker -------------------------------------------------------------------------


@dataclass(frozen=True)
class RunJob:
    id: str
    name: str
    spec: JobSpec
    seeds: list[int]
    inputs: dict[str, str]  # media field -> path in the job's inputs dir
    input_hashes: dict[str, str]  # media field -> sha256, as hashed at the claim (or after a retry)
    out_dir: str
    work_dir: str
    loras: list[tuple[str, float]]  # the spec's LoRAs as files (path, scale), found at dispatch


@dataclass(frozen=True)
class StopJob:
    job_id: str


@dataclass(frozen=True)
class Exit:
    pass


# --- worker -> supervisor -------------------------------------------------------------------------


@dataclass(frozen=True)
class Ready:
    device: str
    model: Any
    load_s: float


@dataclass(frozen=True)
class Fatal:
    error: ErrorRecord


@dataclass(frozen=True)
class Beat:
    # On a GPU: memory in use and the peak since the worker started, in bytes
    # ({"allocated", "reserved", "peak"}); None on the CPU.
    gpu: dict[str, int] | None = None


@dataclass(frozen=True)
class Exiting:
    """The worker leaves after its current message (a job's failure that may have broken the
    device, or its own SIGTERM): the supervisor must not hand it another job."""

    reason: str


@dataclass(frozen=True)
class Started:
    job_id: str


@dataclass(frozen=True)
class JobProgress:
    job_id: str
    progress: dict[str, Any]


@dataclass(frozen=True)
class Done:
    job_id: str
    outputs: list[dict[str, Any]]
    seeds: list[int]
    timings: dict[str, float]
    model: Any  # the identity the job ran with: the models' and its LoRAs' (name, sha256, scale)


@dataclass(frozen=True)
class Failed:
    job_id: str
    error: ErrorRecord
    input_fault: bool  # the input's fault: never retried


@dataclass(frozen=True)
class Stopped:
    job_id: str

