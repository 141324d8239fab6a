"""`sharedft-fx export`: exit codes, files, saved-transform input."""

from __future__ import annotations

import textwrap

import onnx
import pytest
import torch

import sharedft_fx
from sharedft_fx.cli import main
from sharedft_fx.export import verify
from sharedft_fx.model_spec import build_model

FACTORY = textwrap.dedent(
    """
    from torch import nn


    def build(num_classes=10):
        layers = [nn.Conv2d(3, 32, 3, padding=1)]
        for _ in range(4):
            layers += [nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU()]
        return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                             nn.Linear(32, num_classes))
    """
)


@pytest.fixture()
def spec(tmp_path) -> str:
    path = tmp_path / "net.py"
    path.write_text(FACTORY)
    return f"{path}:build"


def _unique_parameter_bytes(model: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in {id(p): p for p in model.parameters()}.values())


def test_export_from_model_spec_exits_zero(spec, tmp_path, capsys):
    out = tmp_path / "out" / "net.onnx"
    code = main(["export", spec, "--out", str(out), "--input-shape", "1,3,16,16"])
    assert code == 0
    assert out.is_file()
    onnx.checker.check_model(str(out))
    captured = capsys.readouterr()
    assert captured.err == ""
    assert 3 <= len(captured.out.strip().splitlines()) <= 12  # a short table
    proto = onnx.load(str(out))
    banks = [t.name for t in proto.graph.initializer if ".banks." in t.name]
    assert len(banks) == 1
    original = build_model(spec)
    assert out.stat().st_size < 0.75 * _unique_parameter_bytes(original)


def test_export_from_saved_transform(spec, tmp_path):
    torch.manual_seed(0)
    model = build_model(spec).eval()
    x = torch.randn(1, 3, 16, 16)
    result = sharedft_fx.transform(model, x)
    sharedft_fx.save(result, tmp_path / "saved", model_spec=spec)
    out = tmp_path / "net.onnx"
    code = main(["export", str(tmp_path / "saved"), "--out", str(out), "--input-shape",
                 "2,3,16,16", "--mode", "dense", "--random-inputs", "1"])
    assert code == 0
    proto = onnx.load(str(out))
    assert not any(".banks." in t.name for t in proto.graph.initializer)
    # dense: the merged model is about as large as the transformed weights made dense again
    assert out.stat().st_size > 0.9 * _unique_parameter_bytes(model)


def test_saved_transform_without_model_spec_is_an_input_error(spec, tmp_path, capsys):
    model = build_model(spec).eval()
    result = sharedft_fx.transform(model, torch.randn(1, 3, 16, 16))
    sharedft_fx.save(result, tmp_path / "saved")
    code = main(["export", str(tmp_path / "saved"), "--out", str(tmp_path / "m.onnx")])
    assert code == 3
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert not (tmp_path / "m.onnx").exists()


def test_verification_failure_exits_nonzero_with_one_line(spec, tmp_path, capsys, monkeypatch):
    real = verify.torch_outputs
    monkeypatch.setattr(verify, "torch_outputs", lambda m, a: [r * 1.5 for r in real(m, a)])
    out = tmp_path / "net.onnx"
    code = main(["export", spec, "--out", str(out), "--input-shape", "1,3,16,16"])
    assert code == 6
    captured = capsys.readouterr()
    assert len(captured.err.strip().splitlines()) == 1
    assert captured.out == ""
    assert list(tmp_path.iterdir()) == [tmp_path / "net.py"]
