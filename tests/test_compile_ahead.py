"""The compile helper (``engine/compile_ahead.py``, ``engine/compile_helper.py``): a worker's first
job runs eagerly while a helper process compiles the same graphs into inductor's cache, and the
next jobs load them.

On the CPU, where inductor generates C++: the graphs and their cache keys are made the same way as
on a GPU. The helper is a real process, killed for real where a test says so.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from fploopd.engine.compile_ahead import (
    EAGER_EXTRA,
    MIN_ROOM,
    CompileAhead,
    _Record,
    attach,
    helper_room,
    setup_for,
    too_little_room,
    warm_marker,
)
from fploopd.engine.compile_helper import CallSpec, HelperSetup, TensorSpec, describe, materialize
from fploopd.engine.tiers import FULL_SIZE, choose_tier, need_bytes

GiB = 2**30
HOPPER = (9, 0)
TESTS = Path(__file__).parent


def test_a_call_is_described_by_its_tensors_layout_and_values_not_their_contents() -> None:
    base = torch.randn(4, 10, 6)
    view = base[:, 2:9]  # a view: strides of the whole, an offset into it
    spec = describe("double_block", (view, torch.ones(3, dtype=torch.bfloat16), "sdpa", True, 7, None))
    assert spec.args[0] == TensorSpec((4, 7, 6), (60, 6, 1), 12, "float32")
    assert spec.args[1] == TensorSpec((3,), (1,), 0, "bfloat16")
    assert spec.args[2:] == ("sdpa", True, 7, None)
    assert spec.grad_mode == "grad"
    with torch.inference_mode():
        assert describe("double_block", (view,)).grad_mode == "inference"
    with torch.no_grad():
        assert describe("double_block", (view,)).grad_mode == "no_grad"
    # Other values make the same description; another shape does not.
    assert describe("double_block", (torch.zeros(4, 10, 6)[:, 2:9],)).args == spec.args[:1]
    assert describe("double_block", (base,)).args != spec.args[:1]
    # The layout the compiled path converts to (the VAE decoder's channels-last).
    z = torch.zeros(1, 16, 5, 8, 6)
    assert describe("vae_decoder", (z,), torch.channels_last_3d).args[0] == TensorSpec(
        (1, 16, 5, 8, 6), tuple(z.contiguous(memory_format=torch.channels_last_3d).stride()), 0, "float32")
    with pytest.raises(TypeError, match="cannot describe a Linear argument"):
        describe("double_block", (torch.nn.Linear(2, 2),))


def test_materialize_repeats_shape_strides_offset_and_dtype() -> None:
    base = torch.randn(4, 10, 6, dtype=torch.bfloat16)
    for t in (base, base[:, 2:9], base.transpose(0, 2), base[1:, :, 3]):
        spec = describe("single_block", (t,)).args[0]
        made = materialize(spec, "cpu")
        assert (made.shape, made.stride(), made.storage_offset(), made.dtype) == (t.shape, t.stride(), t.storage_offset(), t.dtype)
        assert torch.isfinite(made.float()).all()


def test_memory_formats_pickle_the_same_whatever_the_import_order(tmp_path: Path) -> None:
    """inductor's cache key pickles memory formats; torch pickles them as a global found through
    the first module that imported torch, so two processes importing in another order made other
    keys (the helper's graphs missed in the worker). ``configure_dynamo`` pins the pickle."""
    code = (
        "import pickle, sys\n"
        "{first}\n"
        "import torch\n"
        "from fploopd.engine.compile import configure_dynamo\n"
        "configure_dynamo()\n"
        "sys.stdout.write(pickle.dumps((torch.contiguous_format, torch.channels_last_3d)).hex())\n"
    )
    outs = []
    for first in ("", "import fploopd.engine.random_models", "import fploopd.engine.compile_ahead, fploopd.media"):
        done = subprocess.run([sys.executable, "-c", code.format(first=first)], capture_output=True, text=True, check=True)
        outs.append(done.stdout)
    assert len(set(outs)) == 1
    assert pickle.loads(bytes.fromhex(outs[0])) == (torch.contiguous_format, torch.channels_last_3d)


def _ahead(**changes: Any) -> CompileAhead:
    setup = HelperSetup(device="cpu", room=None, transformer_class="diffusers:HunyuanVideoFramepackTransformer3DModel",
                        transformer_config={}, transformer_dtype="bfloat16", transformer_requires_grad=False,
                        fused=False, fp8_granularity=None, compile_mode=None)  # fmt: skip
    return CompileAhead(HelperSetup(**{**setup.__dict__, **changes}))


def _spec(target: str, n: int) -> CallSpec:
    return CallSpec(target, (TensorSpec((1, n, 8), (8 * n, 8, 1), 0, "bfloat16"),), "inference")


def test_a_job_switches_to_the_compiled_calls_in_the_order_they_were_first_made() -> None:
    """dynamo makes a static graph for the first shape and a dynamic one from the second: the
    worker sees each target's shapes in the helper's order, so a shape compiled after one still
    compiling waits for it (a switch in the middle of a job compiled the second shape first on an
    H200, and its graph was not the helper's)."""
    ahead = _ahead()
    a, b, c, d = _spec("double_block", 10), _spec("double_block", 12), _spec("single_block", 10), _spec("single_block", 12)
    for spec, outcome in ((a, "pending"), (b, "ready"), (c, "ready"), (d, "failed")):
        ahead.records[spec] = _Record(spec, 0.0, outcome=outcome)
    ahead.begin_job()
    assert ahead.active == {c, d}  # failed: compiled in the worker itself, as without a helper
    assert ahead.use_compiled(c) and ahead.use_compiled(d)
    ahead.records[a].outcome = "ready"
    assert a not in ahead.active  # not before the next job starts
    ahead.begin_job()
    assert ahead.active == {a, b, c, d}


def test_a_call_the_helper_cannot_compile_is_compiled_in_the_worker_and_an_idle_helper_exits() -> None:
    ahead = _ahead(idle_exit_s=1.0)  # no VAE in the setup: a decoder call fails in the helper
    z = torch.zeros(1, 16, 2, 4, 4)
    decode = ahead.wrap("vae_decoder", lambda x: "eager", lambda x: "compiled", layout=torch.channels_last_3d)
    assert decode(z) == "eager"
    assert ahead.wait(timeout=120)
    (record,) = ahead.records.values()
    assert record.outcome == "failed"
    assert record.error == "ValueError: this worker does not compile its VAE decoder"
    assert decode(z) == "eager"  # still this job
    ahead.begin_job()
    assert decode(z) == "compiled"
    deadline = time.monotonic() + 60
    while ahead._proc is not None and time.monotonic() < deadline:  # the helper leaves after 1 s idle
        time.sleep(0.2)
        ahead.poll()
    assert ahead._proc is None and ahead.crashes == 0 and ahead.disabled is None
    ahead.close()


def _spec_of(x: torch.Tensor) -> CallSpec:
    return describe("double_block", (x,))


def test_a_killed_helper_leaves_its_calls_to_the_worker_and_the_next_call_starts_another() -> None:
    ahead = _ahead()
    block = ahead.wrap("double_block", lambda *a: "eager", lambda *a: "compiled", skip=2)
    x = torch.zeros(1, 10, 8)
    assert block("module", "weights", x) == "eager"
    first = ahead._proc
    os.kill(first.pid, signal.SIGKILL)
    first.join(timeout=30)
    ahead.poll()
    (record,) = ahead.records.values()
    assert (record.outcome, record.error) == ("failed", "the helper died (it exited with code -9)")
    assert ahead.crashes == 1 and ahead.disabled is None
    assert block("module", "weights", torch.zeros(1, 12, 8)) == "eager"  # a new call: a new helper
    assert ahead.starts == 2 and ahead._proc is not None and ahead._proc.pid != first.pid
    os.kill(ahead._proc.pid, signal.SIGKILL)
    ahead._proc.join(timeout=30)
    ahead.poll()
    # Two deaths: the worker compiles everything itself from now on.
    assert block("module", "weights", torch.zeros(1, 14, 8)) == "compiled"
    assert ahead.disabled == "the compile helper died 2 times"
    assert ahead.starts == 2 and ahead.records[_spec_of(torch.zeros(1, 12, 8))].outcome == "failed"
    ahead.close()


def test_the_helper_gets_the_room_the_tier_leaves_and_none_on_the_cpu(tiny_components: Any) -> None:
    resident = choose_tier(140 * GiB, HOPPER)
    assert resident.tier == "bf16-resident"
    assert resident.spare == resident.usable - need_bytes("bf16-resident", FULL_SIZE) > 60 * GiB
    fp8 = choose_tier(140 * GiB, HOPPER, prefer_fp8=True)
    assert fp8.tier == "fp8-resident" and fp8.untiled_decode
    assert fp8.spare == fp8.usable - need_bytes("fp8-resident", FULL_SIZE) - FULL_SIZE.vae - FULL_SIZE.untiled_decode
    assert choose_tier(24 * GiB, HOPPER).spare == 0  # fp8-resident with strips: the spare is the decode's
    assert choose_tier(12 * GiB, HOPPER).spare == 0  # streamed
    # An eager first job peaks above the compiled one the tiers plan for: the helper gets the rest.
    assert helper_room(resident.spare) == resident.spare - EAGER_EXTRA
    assert helper_room(EAGER_EXTRA // 2) == 0
    assert too_little_room(MIN_ROOM) is None
    assert too_little_room(MIN_ROOM - 2**28) == "3.8 GiB for it beside the VRAM tier, 4 GiB needed"
    assert attach(tiny_components) is None and tiny_components.compile_ahead is None
    setup = setup_for(tiny_components, room=None)
    assert setup.transformer_class == "diffusers.models.transformers.transformer_hunyuan_video_framepack:HunyuanVideoFramepackTransformer3DModel"
    assert setup.vae_class is None  # the CPU placement compiles no decoder


def test_the_cache_is_marked_warm_once_every_target_is_settled(tmp_path: Path) -> None:
    ahead = _ahead()
    ahead.marker = tmp_path / "marker.json"
    a, b, c = _spec("double_block", 4), _spec("double_block", 6), _spec("single_block", 4)
    for spec in (a, b):
        ahead.records[spec] = _Record(spec, 0.0)
    ahead._report(("ready", a))
    ahead._report(("ready", b))
    assert not ahead.marker.exists()  # no single block yet
    ahead.records[c] = _Record(c, 0.0)
    ahead._report(("ready", a))
    assert not ahead.marker.exists()  # the single block still compiling
    # Left to the worker (out of the helper's memory): the worker compiles it into the cache itself.
    ahead._report(("failed", c, "RuntimeError: out of memory"))
    marked = json.loads(ahead.marker.read_text())
    assert marked["setup"]["transformer_class"] == ahead.setup.transformer_class
    assert [r["outcome"] for r in marked["calls"]] == ["ready", "ready", "failed"]
    # One marker per setup: the memory share and idle time are not part of it, the preparation is.
    base = _ahead().setup
    assert warm_marker(base) == warm_marker(_ahead(room=2**33, idle_exit_s=1.0).setup)
    assert warm_marker(base) != warm_marker(_ahead(fp8_granularity="row").setup)
    assert warm_marker(base) != warm_marker(_ahead(vae_class="diffusers:AutoencoderKLHunyuanVideo").setup)
    # Where the weights were read from makes no graph; the model's shape does.
    config = {"num_layers": 20, "_name_or_path": "/models/a"}
    moved = warm_marker(_ahead(transformer_config={**config, "_name_or_path": "/mnt/b"}).setup)
    assert warm_marker(_ahead(transformer_config=config).setup) == moved
    assert warm_marker(_ahead(transformer_config={**config, "num_layers": 2}).setup) != moved


MARKER_OF_THE_FULL_VAE = """
import torch
from fploopd.engine import random_models
from fploopd.engine.compile_ahead import warm_marker
from fploopd.engine.compile_helper import HelperSetup
vae = random_models.build_vae("full", torch.device("meta"), torch.float16)
print(warm_marker(HelperSetup(
    device="cpu", room=None, transformer_class="t", transformer_config={}, transformer_dtype="bfloat16",
    transformer_requires_grad=False, fused=False, fp8_granularity=None, compile_mode=None,
    vae_class="diffusers:AutoencoderKLHunyuanVideo", vae_config=dict(vae.config))).name)
"""


def test_every_process_computes_the_same_marker_for_the_same_models(tmp_path: Path) -> None:
    """diffusers lists a config's defaulted keys in set order, which Python's string hashing changes
    from process to process: a restarted worker must still find its marker (a GPU run found two)."""
    names = set()
    for seed in ("1", "2", "3"):
        env = {**os.environ, "PYTHONHASHSEED": seed, "TORCHINDUCTOR_CACHE_DIR": str(tmp_path)}
        done = subprocess.run([sys.executable, "-c", MARKER_OF_THE_FULL_VAE], env=env, check=False,
                              capture_output=True, text=True, timeout=300)  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        names.add(done.stdout.split()[-1])
    assert len(names) == 1, names


@pytest.fixture(scope="module")
def worker_run(tiny_root: Path, tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """``compile_ahead_worker.py``: three tiny loop jobs in a fresh process with an empty compile cache."""
    out = tmp_path_factory.mktemp("compile-ahead")
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(out / "inductor")}
    done = subprocess.run([sys.executable, str(TESTS / "compile_ahead_worker.py"), str(out)], env=env, check=False,
                          capture_output=True, text=True, timeout=1500)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def test_the_first_job_runs_eagerly_and_the_next_load_the_helpers_graphs(worker_run: list[dict[str, Any]]) -> None:
    first, second, third = worker_run
    # The first job compiled nothing in the worker; the helper got every call, in the job's order.
    assert first["counters"]["unique_graphs"] == 0 and first["counters"]["fxgraph_cache_miss"] == 0
    targets = [c["target"] for c in first["calls"]]
    assert targets[:2] == ["double_block", "single_block"] and "vae_decoder" in targets
    assert all(c["outcome"] == "ready" for c in second["calls"])
    # The second job compiled each graph the helper made, every one a cache hit.
    made = len(second["calls"])
    assert second["active"] == made
    assert second["counters"] == {"fxgraph_cache_hit": made, "fxgraph_cache_miss": 0, "fxgraph_cache_bypass": 0,
                                  "unique_graphs": made}  # fmt: skip
    assert third["counters"] == second["counters"]  # nothing new later
    # Every target had its graph: the cache is marked warm for this setup, where the cache lives.
    assert second["marked"] and Path(second["marker"]).parent == Path(second["cache"])
    marked = json.loads(Path(second["marker"]).read_text())
    assert sorted(c["target"] for c in marked["calls"]) == sorted(c["target"] for c in second["calls"])
    # Compiled and eager compute the same loop: compile's fused bf16 arithmetic moves the tiny random
    # model's frames by 2.7 of 255 levels on average (measured); a wrong graph or layout would move them far more.
    eager, compiled, again = (np.load(r["frames"]).astype(np.int16) for r in worker_run)
    assert eager.shape == compiled.shape == again.shape and eager.shape[0] > 8
    assert np.abs(compiled - eager).mean() < 6.0
    assert np.array_equal(compiled, again)


@pytest.fixture(scope="module")
def first_use_run(worker_run: list[dict[str, Any]]) -> dict[str, Any]:
    """A later worker on the marked cache: a fresh process, no helper, compiling on first use."""
    out = Path(worker_run[0]["frames"]).parent
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": worker_run[0]["cache"]}
    done = subprocess.run([sys.executable, str(TESTS / "compile_ahead_worker.py"), str(out), "first-use"], env=env,
                          check=False, capture_output=True, text=True, timeout=1500)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    (row,) = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    return row


def test_a_worker_that_finds_the_mark_compiles_every_graph_from_the_cache(
    worker_run: list[dict[str, Any]], first_use_run: dict[str, Any]
) -> None:
    # The mark promises the helper's graphs: compiling on first use must make the same ones, the
    # decoder's included (its input channels-last, as the helper compiled it).
    made = len(worker_run[1]["calls"])
    assert first_use_run["counters"] == {"fxgraph_cache_hit": made, "fxgraph_cache_miss": 0,
                                         "fxgraph_cache_bypass": 0, "unique_graphs": made}  # fmt: skip
    assert np.array_equal(np.load(first_use_run["frames"]), np.load(worker_run[1]["frames"]))
