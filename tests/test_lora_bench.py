"""``fploopd bench --stages lora`` on the tiny model writes its figures in the bench's schema (no
timed assertions)."""

from __future__ import annotations

import json
from pathlib import Path

from fploopd.cli import main
from fploopd.engine.lora_testdata import block_linears, tiny_transformer_meta

KEYS = {"median_s", "min_s", "max_s", "peak_gib", "vs_baseline", "max_abs_dev", "mean_abs_dev"}


def test_bench_lora_stage_schema(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    assert main(["bench", "--model", "tiny", "--device", "cpu", "--stages", "lora", "--quick", "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["errors"] == {}
    results = doc["results"]
    modules = len(block_linears(tiny_transformer_meta(), include_norms=True))  # every Linear of every block
    for name in ("lora.merge_first", "lora.switch_a_to_b", "lora.switch_b_to_a", "lora.merge_two", "lora.restore_base"):
        row = results[name]
        assert KEYS <= set(row) and row["median_s"] > 0 and row["modules"] == modules and row["rank"] == 32, name
    assert results["lora.merge_first"]["rewritten"] == modules
    assert results["lora.restore_base"]["restored"] == modules
    assert results["lora.restore_base"]["base_from"] == "host copies"  # a random model has no files
    assert results["section.lora_none"]["vs_baseline"] == 1.0
    merged = results["section.lora_merged"]
    assert merged["median_s"] > 0 and merged["vs_baseline"] is not None and merged["graphs_compiled"] == 0
