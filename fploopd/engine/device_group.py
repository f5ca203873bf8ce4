"""A device group ("cuda:0+cuda:1"): one job's transformer forwards spread over several devices.

The process that loads the whole model set (a daemon worker, a one-shot command, the bench) is the
group's rank 0, on the group's first device. ``DeviceGroup.start`` starts one follower process per
other device (``python -m fploopd.engine.device_group``, orders on stdin, a Unix socket for the
headers); followers die with their parent, join a ``torch.distributed`` group through a file store
in a private temporary folder (nothing listens on the network), load only the transformer,
and run ``context_parallel.ContextParallelRunner.serve`` until the leader stops them.
``DeviceGroup.attach(components)`` then makes ``components.runner()`` a context-parallel runner.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import pickle
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from multiprocessing.connection import Client, Connection, Listener
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from loguru import logger
from torch import nn

from fploopd.engine.accel import optimize
from fploopd.engine.components import Components, _load, _transformer_loader
from fploopd.engine.context_parallel import ContextParallelRunner, GroupLink, check_heads
from fploopd.engine.forward import TransformerRunner
from fploopd.engine.options import RunnerOptions
from fploopd.engine.sources import resolve
from fploopd.errors import FploopdError, InputError
from fploopd.procutil import die_with_parent

TransformerLoader = Callable[[torch.device], nn.Module]
# The longest wait inside a collective is one rank compiling the blocks while the other waits in the
# first all-to-all (a minute or two); between forwards followers wait on their pipe, which has no
# timeout. A rank that died leaves the others waiting this long, then NCCL ends them.
_COLLECTIVE_TIMEOUT = timedelta(minutes=10)


def group_members(device: str) -> list[str]:
    """``"cuda:0+cuda:1"`` -> ``["cuda:0", "cuda:1"]`` (a plain device: itself alone)."""
    return [d.strip() for d in device.split("+") if d.strip()]


def is_group(device: str) -> bool:
    return "+" in device


def load_transformer(
    model: str, allow_download: bool, device: torch.device, dtype: torch.dtype = torch.bfloat16
) -> nn.Module:
    """The transformer of ``model`` (a ``sources.resolve`` name or folder) in ``dtype`` on ``device``,
    as ``load_components`` loads it."""
    paths = resolve(model, allow_download=allow_download)
    transformer = _load("transformer", paths.transformer, _transformer_loader())
    return transformer.to(device=device, dtype=dtype).eval().requires_grad_(False)




def _package_root() -> str:
    import fploopd

    return str(Path(fploopd.__file__).resolve().parent.parent)


def _backend(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


def _init(rank: int, size: int, store: Path, device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(_backend(device), init_method=store.as_uri(), rank=rank, world_size=size,
                            timeout=_COLLECTIVE_TIMEOUT)  # fmt: skip


def _follower_main(rank: int, size: int, store: str, device: str, load: TransformerLoader, pipe: Any) -> None:
    """A follower process: join the group, load the transformer, prepare it as the leader says,
    serve forwards until stopped."""
    dev = torch.device(device)
    _init(rank, size, Path(store), dev)
    transformer = load(dev)
    link = GroupLink(rank, size, dev, [pipe])
    try:
        msg = link.recv()
    except EOFError:
        return
    if msg[0] != "setup":
        return
    options: RunnerOptions = msg[1]
    weights = None
    if dev.type == "cuda":
        weights = optimize(transformer, device=dev, fp8=options.fp8, attention=options.attention,
                           compile=options.compile).weights  # fmt: skip
    pipe.send(("ready", rank))
    ContextParallelRunner(transformer, options, weights=weights, link=link).serve()
    dist.destroy_process_group()


def _follower_entry() -> None:
    """``python -m fploopd.engine.device_group``: a follower, its orders pickled on stdin. A plain
    child process rather than a multiprocessing one: a daemon's worker is a daemonic process, and
    those may not start multiprocessing children."""
    die_with_parent()
    order = pickle.load(sys.stdin.buffer)
    if os.getppid() != order["parent"]:
        return  # the leader died before this process could ask to die with it
    pipe = Client(order["address"], family="AF_UNIX", authkey=order["authkey"])
    pipe.send(order["rank"])
    _follower_main(order["rank"], order["size"], order["store"], order["device"], order["load"], pipe)


def _accept(listener: Listener, count: int, processes: list[subprocess.Popen], what: str) -> list[Connection]:
    """The followers' connections in rank order; fails when one of them exits before connecting."""
    conns: dict[int, Connection] = {}
    failure: list[BaseException] = []

    def accept_all() -> None:
        try:
            for _ in range(count):
                conn = listener.accept()
                conns[conn.recv()] = conn
        except BaseException as exc:  # noqa: BLE001 - reported by the waiting thread
            failure.append(exc)

    thread = threading.Thread(target=accept_all, name="group-accept", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(0.2)
        dead = [p for p in processes if p.poll() is not None]
        if dead and thread.is_alive():
            raise FploopdError(f"a follower of the device group {what} exited while starting (exit status "
                               f"{dead[0].returncode}; its messages are in this log above)")  # fmt: skip
    if failure:
        raise FploopdError(f"the device group {what} could not start its followers: {failure[0]}")
    return [conns[rank] for rank in sorted(conns)]


@dataclass
class DeviceGroup:
    """The leader's handle on its group: the link to the followers and their processes."""

    devices: list[str]
    link: GroupLink
    processes: list[subprocess.Popen]
    store_dir: str

    @classmethod
    def start(cls, devices: Sequence[str], load: TransformerLoader) -> DeviceGroup:
        """Start a follower for each device after the first and join the group as rank 0.
        ``load(device)``: a picklable function that builds the transformer (as the leader's)."""
        devices = list(devices)
        what = "+".join(devices)
        if len(devices) < 2:
            raise FploopdError(f"a device group needs 2 or more devices, got {what!r}")
        size = len(devices)
        store_dir = tempfile.mkdtemp(prefix="fploopd-group-")  # private (0700): the store and the socket
        address, authkey = str(Path(store_dir) / "control"), secrets.token_bytes(32)
        listener = Listener(address, family="AF_UNIX", authkey=authkey)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([_package_root(), os.environ.get("PYTHONPATH", "")])}
        processes: list[subprocess.Popen] = []
        try:
            for rank in range(1, size):
                proc = subprocess.Popen([sys.executable, "-m", "fploopd.engine.device_group"], stdin=subprocess.PIPE,
                                        env=env)  # fmt: skip
                processes.append(proc)
                order = {"rank": rank, "size": size, "store": str(Path(store_dir) / "store"), "device": devices[rank],
                         "load": load, "address": address, "authkey": authkey, "parent": os.getpid()}  # fmt: skip
                assert proc.stdin is not None
                proc.stdin.write(pickle.dumps(order))
                proc.stdin.close()
            pipes = _accept(listener, size - 1, processes, what)
            leader = torch.device(devices[0])
            _init(0, size, Path(store_dir) / "store", leader)
        except BaseException:
            for proc in processes:
                proc.kill()
            shutil.rmtree(store_dir, ignore_errors=True)
            raise
        finally:
            listener.close()
        logger.info("device group {}: {} ranks joined", what, size)
        return cls(devices, GroupLink(0, size, leader, pipes), processes, store_dir)

    def attach(self, components: Components) -> Components:
        """``components`` (loaded on the first device) with runners that spread over the group; the
        followers prepare their transformers with the same options and say when they are ready."""
        if components.streamer is not None:
            raise FploopdError(
                f"the device group {'+'.join(self.devices)} needs each GPU to hold the whole transformer "
                f"(the {components.tier.tier if components.tier else 'chosen'} tier streams it); use vram = "
                "\"bf16-resident\" or \"fp8-resident\" on cards with room, or one worker per GPU"
            )
        check_heads(components.transformer.config.num_attention_heads, len(self.devices))
        self.setup(components.runner_options)
        fields = {f.name: getattr(components, f.name) for f in dataclasses.fields(components)}
        return GroupComponents(**fields, group=self)

    def setup(self, options: RunnerOptions) -> None:
        """Have the followers prepare their transformers for ``options`` (FP8 weights, compile,
        attention kernel) and wait until they are ready to serve."""
        self.link.send(("setup", options))
        for pipe in self.link.pipes:
            try:
                msg = pipe.recv()
            except (EOFError, OSError):
                msg = ("exited while loading the transformer (its messages are in this log above)",)
            if msg[0] != "ready":
                raise FploopdError(f"a follower of the device group {'+'.join(self.devices)} did not start: {msg[0]}")

    def close(self) -> None:
        """Stop the followers and leave the group."""
        self.link.stop()
        for proc in self.processes:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if dist.is_initialized():
            dist.destroy_process_group()
        shutil.rmtree(self.store_dir, ignore_errors=True)


@dataclass
class GroupComponents(Components):
    """A model set whose transformer runs on a device group (rank 0 holds everything else)."""

    group: DeviceGroup | None = None

    def runner(self, *, teacache_threshold: float | None = None) -> TransformerRunner:
        assert self.group is not None
        return ContextParallelRunner(
            self.transformer, self.runner_options.with_teacache(teacache_threshold), weights=self.weights,
            link=self.group.link,
        )

    def apply_loras(self, loras: Sequence[tuple[Any, float]]) -> Any:
        if loras:  # the followers hold the base transformer only; the same on any retry: not retried
            group = "+".join(self.group.devices) if self.group else "a device group"
            raise InputError(
                f"LoRAs do not run on a device group yet ({group}): run LoRA jobs on a worker of one GPU "
                f"(device = \"{group},cuda:N\" adds one) or leave the loras out",
                field="loras",
            )
        return super().apply_loras(loras)


def model_loader(model: str, allow_download: bool) -> TransformerLoader:
    """A picklable ``load(device)`` for followers of a worker of ``model``."""
    return functools.partial(load_transformer, model, allow_download)


__all__ = ["DeviceGroup", "GroupComponents", "group_members", "is_group", "load_transformer", "model_loader"]


if __name__ == "__main__":
    _follower_entry()
