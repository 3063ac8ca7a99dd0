"""The accelerator benchmark script's smoke run: on CPU at tiny sizes, in a process of its own
(on a GPU it is run by hand; its figures are recorded in benchmarks/RESULTS.md)."""

from __future__ import annotations

import json

from tests import oracle, processes


def test_accelerator_script_smoke_run(tmp_path):
    out = tmp_path / "report.json"
    processes.run(["benchmarks/accelerator.py", "--smoke", "--out", str(out)], timeout=600)
    report = json.loads(out.read_text())
    assert report["device"].startswith("cpu")
    parity = report["parity"]
    assert parity["reference"].startswith("torch.optim.SGD float64")
    assert len(parity["relative_error"]) == len(oracle.CONFIGS)
    assert max(parity["relative_error"].values()) < 1e-5  # float32 against float64
    assert parity["step_vs_update"] < 1e-6
    assert report["roofline_gbps"] > 0
    assert set(report["throughput"]) == {
        f"{model} / {mode}"
        for model in ("gpt2", "resnet50", "many_leaves")
        for mode in ("float32", "bf16+f32 buffers")
    }
    for run in report["throughput"].values():
        assert set(run["rows"]) == {"sgdx.step", "update+apply", "optax"}
        for row in run["rows"].values():
            assert row["median_ms"] > 0 and row["compile_s"] > 0
