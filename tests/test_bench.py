"""``fploopd bench --model tiny --device cpu`` writes the documented schema (no timed assertions)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from fploopd.cli import main

REPO = Path(__file__).resolve().parents[1]
KEYS = {"median_s", "min_s", "max_s", "peak_gib", "vs_baseline", "max_abs_dev", "mean_abs_dev"}


def _number_or_null(v: object) -> bool:
    return v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))


def test_bench_tiny_cpu_schema(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    assert main(["bench", "--model", "tiny", "--device", "cpu", "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    for key in ("gpu", "torch", "model", "bucket", "window", "results"):
        assert key in doc
    assert doc["model"] == "tiny" and isinstance(doc["window"], int) and isinstance(doc["bucket"], str)
    assert doc["errors"] == {}
    results = doc["results"]
    for name in ("forward.baseline", "forward.ours_eager_sdpa", "section.baseline", "section.ours_bf16",
                 "vae.decode_section.baseline", "vae.encode_image", "prompt_encode"):
        assert name in results, name
    for name, row in results.items():
        assert KEYS <= set(row), name
        assert all(_number_or_null(row[k]) for k in KEYS), name
    assert results["forward.baseline"]["vs_baseline"] == 1.0
    ours = results["forward.ours_eager_sdpa"]
    assert ours["median_s"] > 0 and ours["max_abs_dev"] < 1e-4  # same function as the baseline
    assert results["section.ours_bf16"]["max_abs_dev"] < 1e-3
    # The untimed warm-up forward before each section is not counted as one of its steps.
    assert results["section.ours_bf16"]["forwards_computed"] == doc["steps"]
    # After the other stages the loop job runs in a fresh process, as a worker's would.
    for name in ("e2e.loop_job_first", "e2e.loop_job"):
        assert results[name]["process"] == "child" and results[name]["median_s"] > 0, name


def test_bench_rejects_unknown_stage(tmp_path: Path) -> None:
    assert main(["bench", "--model", "tiny", "--device", "cpu", "--stages", "nope", "--out", str(tmp_path / "x.json")]) == 2


def test_bench_e2e_alone_runs_in_process(tmp_path: Path) -> None:
    out = tmp_path / "e2e.json"
    assert main(["bench", "--model", "tiny", "--device", "cpu", "--stages", "e2e", "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["errors"] == {}
    assert set(doc["results"]) == {"e2e.loop_job_first", "e2e.loop_job"}
    assert all("process" not in row for row in doc["results"].values())


def test_python_m_fploopd_bench_runs_without_pyav(tmp_path: Path) -> None:
    """``python3 -m fploopd.bench`` from the repository root, as on a GPU machine where fploopd is not
    installed and PyAV is missing: importing ``av`` fails in this process, and the bench still runs."""
    out = tmp_path / "bench.json"
    argv = ["fploopd.bench", "--model", "tiny", "--device", "cpu", "--stages", "transformer", "--quick", "--out", str(out)]
    code = (
        "import runpy, sys\n"
        "sys.modules['av'] = None  # any 'import av' raises ImportError\n"
        f"sys.argv = {argv!r}\n"
        "runpy.run_module('fploopd.bench', run_name='__main__', alter_sys=True)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert doc["errors"] == {} and "forward.baseline" in doc["results"]


def test_bench_tiers_stage_schema(tmp_path: Path) -> None:
    """``--stages tiers`` on the CPU: each budget's tier as the full-size weights would get it on an
    FP8 GPU, laid out on the tiny model in proportion, and a loop job through it."""
    from fploopd.engine.tiers import TIERS

    out = tmp_path / "tiers.json"
    argv = ["bench", "--model", "tiny", "--device", "cpu", "--stages", "tiers", "--tier-budgets", "unlimited,24,8",
            "--out", str(out)]
    assert main(argv) == 0
    doc = json.loads(out.read_text())
    assert doc["errors"] == {}
    results = doc["results"]
    assert set(results) == {"tiers.h2d_copy", "tiers.unlimited", "tiers.24gib", "tiers.8gib"}
    assert results["tiers.h2d_copy"]["pcie4_gb_s"] > 0
    expected = {"tiers.unlimited": "bf16-resident", "tiers.24gib": "fp8-resident", "tiers.8gib": "fp8-streamed"}
    for name, tier in expected.items():
        row = results[name]
        assert KEYS <= set(row) and all(_number_or_null(row[k]) for k in KEYS), name
        assert row["tier"] == tier and tier in TIERS and row["median_s"] > 0, name
        assert _number_or_null(row["vs_unlimited_bf16"]) and row["vs_unlimited_bf16"] > 0, name
        assert row["reason"] and len(row["resident_blocks"]) == 2, name
    assert results["tiers.unlimited"]["vs_unlimited_bf16"] == 1.0 and results["tiers.unlimited"]["budget_gib"] is None
    assert results["tiers.8gib"]["streamed_gb_per_forward"] > 0 and results["tiers.8gib"]["copy_s_per_job_pcie4"] > 0
    assert results["tiers.24gib"]["streamed_gb_per_forward"] == 0
    # Below the roomy tiers the blocks wait on the host during the decode (a 64 GiB host here).
    assert not results["tiers.unlimited"]["park_for_decode"] and results["tiers.unlimited"]["parked_gb"] == 0
    assert results["tiers.24gib"]["park_for_decode"] and results["tiers.24gib"]["parked_gb"] > 0
    assert results["tiers.8gib"]["park_for_decode"]  # in proportion the tiny model keeps no block at 8 GiB
    for name in expected:
        phases = results[name]["phases_s"]
        assert list(phases) == ["encode", "sample", "decode", "write"] and all(v > 0 for v in phases.values())
        assert sum(phases.values()) <= results[name]["median_s"]


def test_bench_rejects_bad_tier_budgets(tmp_path: Path) -> None:
    out = str(tmp_path / "x.json")
    assert main(["bench", "--model", "tiny", "--device", "cpu", "--stages", "tiers", "--tier-budgets", "big", "--out", out]) == 2
    assert main(["bench", "--model", "tiny", "--device", "cpu", "--stages", "tiers", "--tier-budgets", "0", "--out", out]) == 2
