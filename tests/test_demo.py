"""`sharedft-fx demo --fast`: every stage runs (train, share, recalibrate, fine-tune, ONNX export
checked in ONNX Runtime) and the table's numbers are consistent."""

import json

import pytest

from sharedft_fx.cli import main


@pytest.mark.timeout(300)
def test_demo_fast_runs_every_stage(tmp_path, capsys):
    out = tmp_path / "demo.json"
    code = main(["demo", "--fast", "--out", str(tmp_path / "run"), "--json", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    result = json.loads(out.read_text())
    o, s = result["original"], result["shared"]
    assert s["params"] < 0.6 * o["params"] and result["param_reduction"] > 0.4
    # both models were exported, checked in ONNX Runtime and timed there
    assert o["latency_backend"] == s["latency_backend"] == "onnxruntime"
    assert 0 < s["file_bytes"] < o["file_bytes"]
    assert (tmp_path / "run" / "original.onnx").is_file()
    assert (tmp_path / "run" / "shared.onnx").is_file()
    assert (tmp_path / "run" / "finetune" / "metrics.jsonl").is_file()
    for row in (o, s):
        assert 0.0 <= row["test_accuracy"] <= 1.0 and row["latency_ms"] > 0
    assert o["test_accuracy"] > 0.5  # the tiny reference did learn the digits
    assert set(result["seconds"]) == {"reference", "transform", "recalibrate", "finetune",
                                      "export+evaluate"}
    # the printed table is the JSON's table
    assert f"{o['params']:,}" in captured.out and f"{s['params']:,}" in captured.out
    assert "shared/original: params" in captured.out
