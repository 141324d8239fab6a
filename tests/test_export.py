"""ONNX export: size invariant, ONNX Runtime parity, files, dynamic batch, runtime modes."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torchvision
from torch import nn

import sharedft_fx
from sharedft_fx import ConfigError, ExportSizeError, VerificationError
from sharedft_fx.export import accounting, verify
from sharedft_fx.export.accounting import check_size, onnx_tensor_bytes, torch_tensors

SLACK = 64 * 1024


class ConvStack(nn.Module):
    """Six same-shape 3x3 convs (one bank after sharing) between a stem and a head."""

    def __init__(self, width: int = 64, depth: int = 6) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, padding=1)
        self.blocks = nn.Sequential(*[
            nn.Sequential(nn.Conv2d(width, width, 3, padding=1, bias=False),
                          nn.BatchNorm2d(width), nn.ReLU())
            for _ in range(depth)
        ])
        self.head = nn.Linear(width, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.blocks(self.stem(x))
        return self.head(y.mean((2, 3)))


def _randomize_bn(model: nn.Module) -> None:
    gen = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)


@pytest.fixture(scope="module")
def example() -> torch.Tensor:
    return torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def shared(example) -> sharedft_fx.TransformResult:
    torch.manual_seed(0)
    model = ConvStack().eval()
    with torch.no_grad():
        _randomize_bn(model)
    return sharedft_fx.transform(model, example)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _run(session, x: torch.Tensor) -> np.ndarray:
    return session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]


def _rel(got: np.ndarray, ref: torch.Tensor) -> float:
    ref64 = ref.detach().double().numpy()
    return float(np.linalg.norm(got.astype(np.float64) - ref64) / np.linalg.norm(ref64))


def _ort_error(model: nn.Module, path: Path) -> float:
    """Relative error of the ONNX file in ONNX Runtime against the torch model, on a new batch."""
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        ref = model.eval()(x)
    return _rel(_run(sharedft_fx.ort_session(path), x), ref)


def _bank_names(model: nn.Module) -> list[str]:
    return [n for n, _ in model.named_parameters() if ".banks." in n or n.startswith("banks.")]


def test_compact_stores_every_bank_once_and_matches_torch(shared, example, tmp_path):
    path = tmp_path / "m.onnx"
    out = sharedft_fx.export_onnx(shared.model, example, path)
    assert out.files == (path,) and not out.external_data
    assert out.bytes == path.stat().st_size
    # the file is no larger than the model's unique parameters (+ slack); each bank once
    assert out.bytes <= out.torch_parameter_bytes * 1.02 + SLACK
    assert out.stored_bytes <= out.torch_bytes * 1.01 + SLACK
    banks = _bank_names(shared.model)
    assert len(banks) == 1
    proto = onnx.load(str(path))
    names = [t.name for t in proto.graph.initializer]
    assert names.count(banks[0]) == 1
    bank_shape = tuple(shared.model.get_parameter(banks[0]).shape)
    dense_like = [t.name for t in proto.graph.initializer if tuple(t.dims) == bank_shape]
    assert dense_like == [banks[0]]
    # the low-rank factors are stored, not folded
    assert sum(".B" in n or ".A" in n for n in names) == 2 * 6
    onnx.checker.check_model(str(path))
    # verification: example + 2 random inputs, one output, CPU provider at least
    assert len(out.checks) >= 3 and all(c.passed for c in out.checks)
    assert out.max_rel_error < 1e-4
    assert out.opset >= 18
    assert {o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")} == {out.opset}


def test_export_does_not_modify_the_model(shared, example, tmp_path):
    model = shared.model
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sharedft_fx.export_onnx(model, example, tmp_path / "m.onnx", random_inputs=0)
    assert all(m.training for m in model.modules())
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    model.eval()


def test_dynamic_batch_runs_batch_of_three(shared, example, tmp_path):
    path = tmp_path / "m.onnx"
    sharedft_fx.export_onnx(shared.model, example, path, random_inputs=0)
    session = sharedft_fx.ort_session(path)
    assert isinstance(session.get_inputs()[0].shape[0], str)
    x3 = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        ref = shared.model.eval()(x3)
    got = _run(session, x3)
    assert got.shape == (3, 10)
    assert _rel(got, ref) < 1e-4


def test_static_batch_fixes_the_axis(shared, example, tmp_path):
    path = tmp_path / "m.onnx"
    sharedft_fx.export_onnx(shared.model, example, path, dynamic_batch=False, random_inputs=0)
    assert sharedft_fx.ort_session(path).get_inputs()[0].shape[0] == 1


def test_dense_mode_merges_links_and_matches_torch(shared, example, tmp_path):
    compact = sharedft_fx.export_onnx(shared.model, example, tmp_path / "c.onnx", random_inputs=0)
    dense = sharedft_fx.export_onnx(shared.model, example, tmp_path / "d.onnx", mode="dense")
    proto = onnx.load(str(tmp_path / "d.onnx"))
    names = [t.name for t in proto.graph.initializer]
    assert not any(".banks." in n or n.endswith((".A", ".B")) for n in names)
    assert not any(n.op_type == "MatMul" for n in proto.graph.node)
    # six dense 64x64x3x3 weights instead of one bank + factors
    assert dense.stored_bytes > compact.stored_bytes + 4 * 64 * 64 * 9 * 4
    assert all(c.passed for c in dense.checks) and dense.max_rel_error < 1e-4
    assert _ort_error(shared.model, tmp_path / "d.onnx") < 1e-4


def test_external_data_with_forced_threshold_survives_a_move(shared, example, tmp_path):
    folder = tmp_path / "a"
    path = folder / "m.onnx"
    out = sharedft_fx.export_onnx(
        shared.model, example, path, random_inputs=0, external_data_threshold=1024
    )
    assert out.external_data
    assert out.files == (path, folder / "m.onnx.data")
    assert sorted(p.name for p in folder.iterdir()) == ["m.onnx", "m.onnx.data"]
    assert out.bytes == path.stat().st_size + (folder / "m.onnx.data").stat().st_size
    assert path.stat().st_size < 64 * 1024 < (folder / "m.onnx.data").stat().st_size
    locations = {
        e.value
        for t in onnx.load(str(path), load_external_data=False).graph.initializer
        for e in t.external_data if e.key == "location"
    }
    assert locations == {"m.onnx.data"}  # relative to the model file
    moved = tmp_path / "elsewhere"
    shutil.move(str(folder), str(moved))
    onnx.checker.check_model(str(moved / "m.onnx"))
    assert _ort_error(shared.model, moved / "m.onnx") < 1e-4


def test_single_file_export_removes_stale_external_data(shared, example, tmp_path):
    path = tmp_path / "m.onnx"
    sharedft_fx.export_onnx(shared.model, example, path, random_inputs=0,
                            external_data_threshold=1024)
    out = sharedft_fx.export_onnx(shared.model, example, path, random_inputs=0)
    assert out.files == (path,)
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]


def test_forced_duplication_fails_naming_the_tensor_and_writes_nothing(shared, example, tmp_path):
    path = tmp_path / "m.onnx"
    sharedft_fx.export_onnx(shared.model, example, path, random_inputs=0)
    previous = _sha(path)
    # torch's own ONNX optimizer constant-folds each B @ A into a dense 64x576 tensor
    with pytest.raises(ExportSizeError) as info:
        sharedft_fx.export_onnx(shared.model, example, path, exporter="dynamo-optimize")
    err = info.value
    assert err.exit_code == 8
    assert len(err.tensors) >= 1
    for name in err.tensors[:3]:
        assert name in str(err)
    proto_names = set(err.tensors)
    assert not any(".banks." in n for n in proto_names)  # the bank itself did not grow
    bank = _bank_names(shared.model)[0]
    assert f"as large as {bank}" in str(err)  # the bank each dense copy stands for is named
    assert "sharedft.links." in str(err)  # the factors that were folded away are named
    assert _sha(path) == previous
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]  # no partial file or folder


def test_forced_duplication_leaves_no_file_when_none_existed(shared, example, tmp_path):
    path = tmp_path / "new.onnx"
    with pytest.raises(ExportSizeError):
        sharedft_fx.export_onnx(shared.model, example, path, exporter="dynamo-optimize")
    assert list(tmp_path.iterdir()) == []


def test_verification_failure_raises_and_writes_nothing(shared, example, tmp_path, monkeypatch):
    real = verify.torch_outputs
    monkeypatch.setattr(verify, "torch_outputs", lambda m, a: [r + 1.0 for r in real(m, a)])
    with pytest.raises(VerificationError) as info:
        sharedft_fx.export_onnx(shared.model, example, tmp_path / "m.onnx")
    assert info.value.exit_code == 6
    assert list(tmp_path.iterdir()) == []


def test_tolerances_decide_verification(shared, example, tmp_path):
    # ONNX Runtime's float32 kernels differ from torch's by ~1e-7: zero tolerance must fail
    with pytest.raises(VerificationError):
        sharedft_fx.export_onnx(shared.model, example, tmp_path / "m.onnx", rtol=0.0, atol=0.0)


def test_ort_session_modes_fold_or_keep_weights_shared(shared, example, tmp_path):
    path = tmp_path / "m.onnx"
    sharedft_fx.export_onnx(shared.model, example, path, random_inputs=0)
    stored = {}
    outputs = {}
    x = torch.randn(2, 3, 16, 16)
    for memory in ("fast", "shared"):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.optimized_model_filepath = str(tmp_path / f"opt-{memory}.onnx")
        session = sharedft_fx.ort_session(path, memory=memory, options=opts)
        outputs[memory] = _run(session, x)
        optimized = onnx.load(str(tmp_path / f"opt-{memory}.onnx"))
        stored[memory] = (
            sum(onnx_tensor_bytes(optimized).values()),
            sum(n.op_type == "MatMul" for n in optimized.graph.node),
        )
    # "fast" folded bank + B @ A into six dense weights; "shared" keeps one bank and the MatMuls
    assert stored["fast"][1] == 0
    assert stored["shared"][1] == 6
    assert stored["fast"][0] > stored["shared"][0] + 4 * 64 * 64 * 9 * 4
    np.testing.assert_allclose(outputs["fast"], outputs["shared"], rtol=1e-4, atol=1e-5)
    with pytest.raises(ConfigError):
        sharedft_fx.ort_session(path, memory="small")


def test_invalid_mode_is_a_config_error(shared, example, tmp_path):
    with pytest.raises(ConfigError):
        sharedft_fx.export_onnx(shared.model, example, tmp_path / "m.onnx", mode="tiny")
    assert list(tmp_path.iterdir()) == []


def test_tied_parameters_count_once():
    conv = nn.Conv2d(8, 8, 3)
    model = nn.Sequential(conv, nn.ReLU(), nn.Sequential(conv))
    model.extra = nn.Module()
    model.extra.w = conv.weight  # the same Parameter registered under a third name
    unique = torch_tensors(model)
    assert sum(t.nbytes for t in unique) == (8 * 8 * 9 + 8) * 4
    assert accounting.torch_bytes(model, buffers=False) == (8 * 8 * 9 + 8) * 4


def test_check_size_names_the_tensors_that_grew():
    bank = torch.zeros(64, 64, 3, 3)
    model = nn.Module()
    model.register_parameter("bank", nn.Parameter(bank))
    tensors = torch_tensors(model)
    init = [onnx.numpy_helper.from_array(np.zeros((64, 64, 3, 3), np.float32), "bank")]
    ok = onnx.helper.make_model(onnx.helper.make_graph([], "g", [], [], initializer=init))
    assert check_size(ok, tensors) == {"bank": 64 * 64 * 9 * 4}
    init.append(onnx.numpy_helper.from_array(np.zeros((64, 64, 3, 3), np.float32), "copy_1"))
    grown = onnx.helper.make_model(onnx.helper.make_graph([], "g", [], [], initializer=init))
    with pytest.raises(ExportSizeError) as info:
        check_size(grown, tensors)
    assert info.value.tensors == ("copy_1",)
    assert "copy_1" in str(info.value)


ZOO = [
    ("resnet18", (1, 3, 64, 64)),
    ("resnet50", (1, 3, 64, 64)),
    ("mobilenet_v2", (1, 3, 64, 64)),
    ("efficientnet_b0", (1, 3, 64, 64)),
    ("regnet_y_400mf", (1, 3, 64, 64)),
    ("densenet121", (1, 3, 64, 64)),
    ("convnext_tiny", (1, 3, 64, 64)),
    ("r3d_18", (1, 3, 4, 32, 32)),
]


@pytest.mark.zoo
@pytest.mark.parametrize("name,shape", ZOO, ids=[z[0] for z in ZOO])
def test_zoo_export_is_compact_and_verified(name, shape, tmp_path):
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None).eval()
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    result = sharedft_fx.transform(model, x)
    assert result.modified
    out = sharedft_fx.export_onnx(result.model, x, tmp_path / f"{name}.onnx", random_inputs=1)
    unique_parameter_bytes = accounting.torch_bytes(result.model, buffers=False)
    assert out.torch_parameter_bytes == unique_parameter_bytes
    assert out.bytes <= unique_parameter_bytes * 1.02 + SLACK
    # no node carries the exporter's debug metadata (it would cost ~1 KB per node)
    proto = onnx.load(str(tmp_path / f"{name}.onnx"), load_external_data=False)
    assert sum(len(n.metadata_props) for n in proto.graph.node) == 0
    assert len(out.checks) >= 2 and all(c.passed for c in out.checks)
    assert out.max_rel_error <= 1e-3
    onnx.checker.check_model(str(tmp_path / f"{name}.onnx"))
