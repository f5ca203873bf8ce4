"""Context parallel (Ulysses) forwards on a device group of 2 CPU ranks (gloo, a spawned follower)
equal the one-process runner's; a loop job on a "cpu+cpu" group equals the one-process job."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from fploopd.bench.e2e import job_image, loop_spec
from fploopd.bench.inputs import section_kwargs, tiny_spec
from fploopd.engine.attention import KERNELS
from fploopd.engine.context_parallel import ContextParallelRunner, check_heads, shard_sizes
from fploopd.engine.device_group import DeviceGroup, model_loader
from fploopd.engine.forward import TransformerRunner
from fploopd.engine.options import RunnerOptions
from fploopd.engine.random_models import build_transformer
from fploopd.engine.tiny import TRANSFORMER as TINY

SDPA = RunnerOptions(attention="sdpa")
# float32 on the CPU: the ranks compute each head's attention over the same tokens in the same
# order; what differs is only how the GEMMs block fewer rows, i.e. float32 rounding (~1e-7 relative).
TOLERANCE = 1e-5


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).abs().max() / b.float().abs().max()).item()


def test_shard_sizes_are_contiguous_and_uneven_where_needed() -> None:
    assert shard_sizes(25, 2) == [13, 12]
    assert shard_sizes(18432, 4) == [4608] * 4
    assert shard_sizes(10, 3) == [4, 3, 3]
    with pytest.raises(ValueError, match="2 latent tokens cannot be split over 3 devices"):
        shard_sizes(2, 3)


def test_heads_must_divide() -> None:
    for p in (1, 2, 3, 4, 6, 8):
        check_heads(24, p)
    with pytest.raises(ValueError, match="cannot split the transformer's 24 attention heads evenly; use a group of 1, 2, 3, 4, 6, 8, 12, 24"):
        check_heads(24, 5)


@pytest.fixture(scope="class")
def group() -> Iterator[DeviceGroup]:
    """One 2-rank group for the forward tests (class scope: it is gone before the next group starts,
    a process being in one torch.distributed group at a time)."""
    g = DeviceGroup.start(["cpu", "cpu"], functools.partial(build_transformer, "tiny", dtype=torch.float32, seed=1234))
    g.setup(SDPA)
    yield g
    g.close()


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return build_transformer("tiny", "cpu", torch.float32, seed=1234)


class TestForwards:
    @pytest.mark.parametrize("latent", [(4, 4), (6, 4)], ids=["uneven-13-12", "even-18-18"])
    def test_forward_on_two_ranks_equals_one(self, group: DeviceGroup, model: torch.nn.Module, latent: tuple[int, int]) -> None:
        spec = dataclasses.replace(tiny_spec(TINY), latent_h=latent[0], latent_w=latent[1])
        cp = ContextParallelRunner(model, SDPA, weights=None, link=group.link)
        one = TransformerRunner(model, SDPA)
        cp.reset(2)
        one.reset(2)
        for seed in (0, 1):
            kwargs = section_kwargs(spec, "cpu", torch.float32, seed=seed)
            ref = one(**kwargs)
            out = cp(**kwargs)
            assert out.shape == ref.shape
            assert ref.abs().mean() > 1e-2
            assert _rel(out, ref) < TOLERANCE
        # The attention really ran on these shards.
        assert KERNELS["ulysses[sdpa|0/2]"].run.splits == ((13, 12) if latent == (4, 4) else (18, 18))


    def test_teacache_decisions_are_the_leaders(self, group: DeviceGroup, model: torch.nn.Module) -> None:
        opts = SDPA.with_teacache(0.5)
        cp = ContextParallelRunner(model, opts, weights=None, link=group.link)
        one = TransformerRunner(model, opts)
        cp.reset(5)
        one.reset(5)
        for step in range(5):
            kwargs = section_kwargs(tiny_spec(TINY), "cpu", torch.float32, seed=0, sigma=0.9 - 0.01 * step)
            assert _rel(cp(**kwargs), one(**kwargs)) < TOLERANCE
        assert cp.stats.history == one.stats.history
        assert cp.stats.skipped > 0


def test_loop_job_on_a_cpu_group_equals_one_process(tmp_path: Path) -> None:
    """A whole loop job through ``run_job`` (tiny model from disk, bf16 transformer as a worker
    loads it) on a "cpu+cpu" group: same frames, latents within bf16 rounding of the one-process job."""
    from PIL import Image

    from fploopd.engine.components import load_components
    from fploopd.engine.sources import resolve
    from fploopd.pipelines import run_job

    src = tmp_path / "in.png"
    Image.fromarray(job_image()).save(src)
    spec = loop_spec(False)

    def job(components: object, name: str) -> tuple[torch.Tensor, int]:
        result = run_job(spec, {"image": src}, tmp_path / name, name=name, seeds=[31337], components=components,
                         work_dir=tmp_path / f"work-{name}")  # fmt: skip
        frames = next(o.frames for o in result.outputs if o.kind == "1loop")
        return _final_latents(tmp_path / f"work-{name}"), frames

    comps = load_components(resolve("tiny"), device="cpu")
    ref, ref_frames = job(comps, "one")
    g = DeviceGroup.start(["cpu", "cpu"], model_loader("tiny", False))
    try:
        out, frames = job(g.attach(comps), "two")
    finally:
        g.close()
    assert frames == ref_frames
    assert ref.abs().mean() > 1e-2
    # bf16 transformer: each block's output is rounded to bf16 (2^-8 relative); shard-sized GEMMs
    # may round a value the other way, and 2 sections x 2 steps carry it on.
    assert _rel(out, ref) < 0.05


def _final_latents(work: Path) -> torch.Tensor:
    from safetensors.torch import load_file

    files = sorted(work.rglob("*.safetensors"))
    assert files, f"no section checkpoint in {work}"
    tensors = load_file(str(files[-1]))
    return torch.cat([t.flatten().float() for _, t in sorted(tensors.items()) if t.is_floating_point()])


@pytest.mark.parametrize(
    ("device", "message"),
    [
        ("cuda:0+", "the device group 'cuda:0+' needs 2 or more devices joined by '+', e.g. 'cuda:0+cuda:1'"),
        ("cuda:0+cuda:0", "the device group 'cuda:0+cuda:0' names cuda:0 twice"),
        ("cuda:0+cpu", "the device group 'cuda:0+cpu' mixes the CPU and GPUs; a group is all GPUs"),
        ("cuda:0+gpu1", "'gpu1' in the device group 'cuda:0+gpu1' is not a device; a group joins 'cuda:N' devices"),
        ("cuda:0+cuda:1,cuda:1+cuda:2",
         "cuda:1 is in two workers ('cuda:0+cuda:1' and 'cuda:1+cuda:2'); a GPU in a group serves only that group"),
        ("cuda:0+cuda:1,cuda:1",
         "cuda:1 is in two workers ('cuda:0+cuda:1' and 'cuda:1'); a GPU in a group serves only that group"),
    ],
)
def test_bad_device_groups_are_refused(tmp_path: Path, device: str, message: str) -> None:
    from fploopd.daemon.devicegroups import check_devices
    from fploopd.daemon.settings import SettingsError, load_settings

    with pytest.raises(ValueError) as exc:
        check_devices(device)
    assert str(exc.value) == message
    with pytest.raises(SettingsError) as err:
        load_settings(tmp_path, {"device": device}, env={})
    assert message in err.value.message
    assert err.value.field == "device"


def test_device_groups_are_workers() -> None:
    from fploopd.daemon.settings import Settings

    assert Settings(device="cuda:0 + cuda:1, cuda:2").devices() == ["cuda:0+cuda:1", "cuda:2"]
    assert Settings(device="cpu+cpu").devices() == ["cpu+cpu"]


def test_bench_context_parallel_stage_on_two_cpu_ranks(tmp_path: Path) -> None:
    """``--stages context-parallel`` on the CPU (tiny family, gloo ranks): a row per device count,
    the ratio to the one-device job and the latents' deviation from it."""
    import json

    from fploopd.cli import main

    out = tmp_path / "cp.json"
    argv = ["bench", "--model", "tiny", "--device", "cpu", "--stages", "context-parallel", "--cp-devices", "1,2",
            "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    doc = json.loads(out.read_text())
    assert doc["errors"] == {}
    rows = doc["results"]
    assert set(rows) == {"context_parallel.1", "context_parallel.2"}
    assert rows["context_parallel.1"]["vs_one_device"] == 1.0 and rows["context_parallel.1"]["max_abs_dev"] == 0.0
    two = rows["context_parallel.2"]
    assert two["devices"] == 2 and two["median_s"] > 0 and two["vs_one_device"] > 0
    assert two["max_abs_dev"] is not None and two["max_abs_dev"] <= 0.05 * two["latent_abs_max"]
    assert main(["bench", "--model", "tiny", "--device", "cpu", "--stages", "context-parallel", "--cp-devices", "2,4",
                 "--out", str(out)]) == 2  # fmt: skip


def test_daemon_worker_on_a_cpu_group_delivers(tmp_path: Path) -> None:
    """``device = "cpu+cpu"``: the supervisor sees one worker named by the group; that worker (a
    daemonic process) starts its follower, and the job is delivered as on one device."""
    import json

    from daemon_util import SMALL, drop, image_bytes, make_root, outbox_jobs, run_once, status

    root = make_root(tmp_path, device="cpu+cpu")
    drop(root, "cat", {"prompt": "a red ball", "seed": 7, **SMALL}, media=image_bytes())
    result = run_once(root)
    assert result.returncode == 0, result.stderr[-3000:]
    assert outbox_jobs(root) == ["cat"]
    manifest = json.loads((root / "outbox" / "cat" / "manifest.json").read_text())
    by_kind = {o["kind"]: o for o in manifest["outputs"]}
    assert by_kind["1loop"]["frames"] > 0 and by_kind["loop"]["frames"] == 2 * by_kind["1loop"]["frames"]
    (job,) = status(root)
    assert job["state"] == "done" and job["attempts"] == 0
    logs = "".join(p.read_text() for p in (root / ".fploopd" / "logs").glob("worker-cpu+cpu*.log"))
    assert "device group cpu+cpu: 2 ranks joined" in logs


def test_lora_jobs_go_to_a_one_gpu_worker_beside_a_group(tmp_path: Path) -> None:
    """``device = "cpu+cpu,cpu:1"``: the group's followers hold the base transformer only, so the
    group leaves LoRA jobs to the one-device worker and takes the others; nothing fails or retries."""
    import json

    from daemon_util import SMALL, drop, image_bytes, jobs, make_root, run_once

    from fploopd.engine.lora_testdata import write_tiny_lora

    root = make_root(tmp_path, device="cpu+cpu,cpu:1")
    write_tiny_lora(root / "loras" / "style.safetensors", "musubi", seed=7)
    drop(root, "plain", {"prompt": "a red ball", "seed": 7, **SMALL}, media=image_bytes())
    drop(root, "styled", {"prompt": "a red ball", "seed": 7, "loras": [{"file": "style.safetensors", "scale": 0.8}],
                          **SMALL}, media=image_bytes())  # fmt: skip
    result = run_once(root)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = {r["name"]: r for r in jobs(root)}
    assert {n: (r["state"], r["attempts"]) for n, r in rows.items()} == {"plain": ("done", 0), "styled": ("done", 0)}
    ran_on = {name: [json.loads(e["detail"])["worker"] for e in events(root, row["id"]) if e["what"] == "running"]
              for name, row in rows.items()}  # fmt: skip
    assert ran_on["styled"] and all(w.endswith(":cpu:1") for w in ran_on["styled"])


def events(root: Path, job_id: str) -> list[dict]:
    """The journal's events of one job (its ``running`` events name the worker that took it)."""
    from fploopd.daemon.control import open_journal
    from fploopd.daemon.layout import Layout

    journal = open_journal(Layout(root), "test", readonly=True)
    assert journal is not None
    try:
        return journal.events(job_id)
    finally:
        journal.close()
