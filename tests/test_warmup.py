"""Compiling in the background while the first sections run eagerly (engine/warmup.py)."""

from __future__ import annotations

import dataclasses
import threading

import pytest
import torch

from fploopd.bench.inputs import section_kwargs, tiny_spec
from fploopd.bench.models import build_transformer
from fploopd.engine import forward as forward_mod
from fploopd.engine.blocks import double_block, single_block
from fploopd.engine.forward import TransformerRunner
from fploopd.engine.options import RunnerOptions
from fploopd.engine.tiny import TRANSFORMER as TINY_TRANSFORMER
from fploopd.engine.warmup import BackgroundCompiler


def test_a_key_warms_up_once_in_another_thread() -> None:
    compiler = BackgroundCompiler()
    threads: list[str] = []
    assert compiler.request("a", lambda: threads.append(threading.current_thread().name), "a")
    assert not compiler.request("a", lambda: threads.append("again"), "a")  # pending: not queued twice
    assert compiler.wait(30)
    assert compiler.ready("a") and not compiler.failed("a")
    assert not compiler.request("a", lambda: threads.append("again"), "a")  # done: not queued again
    assert threads == ["fploopd-compile"]
    assert [(r.what, r.ok) for r in compiler.records] == [("a", True)]


def test_compiled_code_never_runs_beside_a_warm_up() -> None:
    """torch.compile is not thread-safe: the job's thread gets to run compiled code only while no
    warm-up is queued or running, and a warm-up waits for compiled code in progress."""
    compiler = BackgroundCompiler()
    started, release = threading.Event(), threading.Event()
    order: list[str] = []

    def slow() -> None:
        started.set()
        release.wait(30)
        order.append("warm-up")

    with compiler.running() as free:
        assert free  # idle: compiled code may run
        compiler.request("a", slow, "a")
        assert not started.wait(0.5)  # the warm-up waits for the compiled call in progress
        order.append("compiled call")
    assert started.wait(30)
    with compiler.running() as free:
        assert not free  # a warm-up runs: eager this time
    release.set()
    assert compiler.wait(30)
    with compiler.running() as free:
        assert free
    assert order == ["compiled call", "warm-up"]


def test_a_failed_warm_up_leaves_its_key_eager_for_good() -> None:
    compiler = BackgroundCompiler()

    def broken() -> None:
        raise RuntimeError("inductor could not lower this")

    compiler.request("b", broken, "b")
    assert compiler.wait(30)
    assert compiler.failed("b") and not compiler.ready("b")
    assert not compiler.request("b", lambda: None, "b")
    assert compiler.records[0].error == "RuntimeError: inductor could not lower this"


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return build_transformer("tiny", "cpu", torch.float32, seed=77)


def test_forwards_run_eagerly_until_their_blocks_are_compiled(model: torch.nn.Module, monkeypatch: pytest.MonkeyPatch) -> None:
    """A forward with new shapes runs eagerly and queues the warm-up; once it is done the next
    forward runs the compiled blocks (dynamo with its eager backend here: real tracing, guards and
    recompiles, no C++ build), and the numbers do not move. The warm-up's second, shorter call
    leaves graphs symbolic in the token counts, so other lengths need no new graph."""
    traced: list[str] = []

    def counting(gm: torch.fx.GraphModule, example_inputs: list) -> object:
        traced.append(threading.current_thread().name)
        return gm.forward

    compiled = (torch.compile(double_block, backend=counting), torch.compile(single_block, backend=counting))
    monkeypatch.setattr(forward_mod, "compiled_blocks", lambda mode=None: compiled)
    spec = tiny_spec(TINY_TRANSFORMER)
    kwargs = section_kwargs(spec, "cpu", torch.float32, seed=3)
    other = section_kwargs(dataclasses.replace(spec, latent_w=6, text_tokens=5), "cpu", torch.float32, seed=4)
    eager = TransformerRunner(model, RunnerOptions(attention="sdpa"))
    reference, reference_other = eager(**kwargs), eager(**other)

    compiler = BackgroundCompiler()
    runner = TransformerRunner(model, RunnerOptions(attention="sdpa", compile=True), compiler=compiler)
    first = runner(**kwargs)
    assert runner.stats.compiled_forwards == 0  # eager this time
    assert compiler.wait(120) and [r.ok for r in compiler.records] == [True]
    assert len(traced) == 4 and set(traced) == {"fploopd-compile"}  # both kinds, at two lengths, in the background
    second = runner(**kwargs)
    assert runner.stats.compiled_forwards == 1
    assert len(traced) == 4  # the warm graphs, nothing traced on the job's thread

    fresh = TransformerRunner(model, RunnerOptions(attention="sdpa", compile=True), compiler=compiler)
    assert fresh(**other) is not None and fresh.stats.compiled_forwards == 0  # new lengths: eager, warm-up queued
    assert compiler.wait(120) and len(compiler.records) == 2
    assert torch.allclose(fresh(**other), reference_other, atol=1e-6) and fresh.stats.compiled_forwards == 1
    assert len(traced) == 4  # the symbolic graphs served the new lengths
    assert torch.allclose(first, reference, atol=1e-6) and torch.allclose(second, reference, atol=1e-6)


def test_streamed_blocks_compile_on_first_use(model: torch.nn.Module) -> None:
    """A warm-up call needs the blocks on the device: with an offloader the compiler is not used."""

    class Streamer:
        def run(self, blocks, fn, state):
            for block in blocks:
                state = fn(block, state)
            return state

    runner = TransformerRunner(model, RunnerOptions(attention="sdpa"), offloader=Streamer(), compiler=BackgroundCompiler())
    assert runner.compiler is None
