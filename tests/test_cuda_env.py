"""A worker's CUDA environment: it sees only its own GPUs, numbered from 0 (one compile cache for
every GPU of a box), and a device the environment does not show is refused by name."""

from __future__ import annotations

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
