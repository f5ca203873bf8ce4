"""A worker's CUDA environment: it sees only its own GPUs, numbered from 0 (one compile cache for
every GPU of a box), and a device the environment does not show is refused by name."""

from __future__ import annotations

import multiprocessing
import os
import signal
from pathlib import Path

import pytest

from fploopd.engine.cuda_env import VISIBLE, own_gpus


@pytest.mark.parametrize(
    ("device", "shown", "local", "visible"),
    [
        ("cuda:0", None, "cuda:0", "0"),
        ("cuda:3", None, "cuda:0", "3"),
        ("cuda:2+cuda:3", None, "cuda:0+cuda:1", "2,3"),
        ("cuda:1", "4,6", "cuda:0", "6"),  # cuda:N counts among the GPUs already shown
        ("cuda:1+cuda:0", "GPU-aa, GPU-bb", "cuda:0+cuda:1", "GPU-bb,GPU-aa"),  # rank 0 stays first
    ],
)
def test_a_worker_sees_its_own_gpus_from_zero(device: str, shown: str | None, local: str, visible: str) -> None:
    env = {} if shown is None else {VISIBLE: shown}
    assert own_gpus(device, env) == local
    assert env == {VISIBLE: visible}


@pytest.mark.parametrize("device", ["cpu", "cpu:1", "mps"])
def test_the_cpu_is_left_alone(device: str) -> None:
    env = {VISIBLE: "0"}
    assert own_gpus(device, env) == device
    assert env == {VISIBLE: "0"}


@pytest.mark.parametrize(("device", "shown"), [("cuda:2", "0,1"), ("cuda:0", "")])
def test_a_gpu_the_environment_hides_is_refused(device: str, shown: str) -> None:
    env = {VISIBLE: shown}
    with pytest.raises(ValueError) as info:
        own_gpus(device, env)
    assert str(info.value) == (
        f"{device} is not a GPU of this process: CUDA_VISIBLE_DEVICES={shown!r} shows {len([s for s in shown.split(',') if s])}"
    )
    assert env == {VISIBLE: shown}  # untouched


def test_a_worker_on_a_gpu_the_service_hides_fails_by_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker reports it to the supervisor (which shows it as a worker that cannot load the
    models) before CUDA or the models are touched, and leaves the environment as it was."""
    from fploopd.daemon import messages as m
    from fploopd.daemon.settings import load_settings
    from fploopd.daemon.worker import Worker

    monkeypatch.setenv(VISIBLE, "0")
    parent, child = multiprocessing.Pipe()
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    try:
        assert Worker(load_settings(tmp_path, env={}), "cuda:3", child).serve() == 2
    finally:
        signal.signal(signal.SIGINT, handlers[0])
        signal.signal(signal.SIGTERM, handlers[1])
    msg = parent.recv()
    assert isinstance(msg, m.Fatal)
    assert (msg.error.kind, msg.error.field) == ("model", "device")
    assert msg.error.error == "cuda:3 is not a GPU of this process: CUDA_VISIBLE_DEVICES='0' shows 1"
    assert not parent.poll() and os.environ[VISIBLE] == "0"
