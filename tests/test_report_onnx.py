"""ONNX side of the report: initializer bytes per tensor and per group, op counts, `diff` CLI."""

from __future__ import annotations

import json
import warnings

import jsonschema
import onnx
import pytest
import torch

import sharedft_fx
from sharedft_fx.cli import main
from sharedft_fx.passes.share_conv_weights import link_key
from sharedft_fx.report import GraphDiff, diff_onnx, load_schema, summarize_onnx


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    x = torch.randn(1, 3, 64, 64)
    result = sharedft_fx.transform(model, x)
    d = tmp_path_factory.mktemp("onnx")
    paths = (d / "resnet18.onnx", d / "resnet18-shared.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for module, path in zip((model, result.model), paths):
            torch.onnx.export(module, (x,), str(path), dynamo=True, optimize=False,
                              external_data=False, verbose=False)
    return model, result, paths


def test_bytes_per_group_and_ops(exported):
    model, result, (a, b) = exported
    d = diff_onnx(a, b)
    groups = {g.name: g for g in result.groups}
    assert [g.name for g in d.groups] == list(groups)
    for g in d.groups:
        ref = groups[g.name]
        assert g.sites == tuple(link_key(s.name) for s in ref.sites)
        assert g.bytes_before == 4 * ref.params_before
        assert g.bytes_after == 4 * ref.params_after
        assert g.bank_bytes == 4 * ref.bank_params
    # only the shared conv weights changed
    assert sum(g.saved for g in d.groups) == d.bytes_saved
    assert d.bytes_saved == 4 * (result.params_before - result.params_after)
    shared_sites = sum(len(g.sites) for g in result.groups)
    assert d.op_delta["MatMul"] == shared_sites
    assert d.before.op_counts["Conv"] == d.after.op_counts["Conv"] == 20
    sizes = {i.name: i.bytes for i in d.after.initializers}
    assert sizes["sharedft.banks.g0_64x64x3x3"] == 64 * 64 * 9 * 4
    assert all(not i.external for i in d.after.initializers)


def test_external_data_sizes(exported, tmp_path):
    _, _, (_, b) = exported
    proto = onnx.load(str(b))
    ext = tmp_path / "ext.onnx"
    onnx.save_model(proto, str(ext), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="ext.onnx.data", size_threshold=1024)
    inline, external = summarize_onnx(b), summarize_onnx(ext)
    assert [(i.name, i.bytes) for i in external.initializers] == [
        (i.name, i.bytes) for i in inline.initializers]
    assert any(i.external for i in external.initializers)
    assert external.file_bytes >= external.initializer_bytes * 0.99
    assert external.op_counts == inline.op_counts


def test_diff_cli_and_schema(exported, tmp_path, capsys):
    _, result, (a, b) = exported
    out = tmp_path / "diff.json"
    assert main(["diff", str(a), str(b), "--json", str(out), "--md", str(tmp_path / "d.md")]) == 0
    doc = json.loads(out.read_text())
    jsonschema.validate(doc, load_schema())
    assert doc["source"] == "onnx"
    assert [g["name"] for g in doc["onnx"]["groups"]] == [g.name for g in result.groups]
    assert [g["saved"] for g in doc["onnx"]["groups"]] == [
        4 * (g.params_before - g.params_after) for g in result.groups]
    ops = {o["op"]: o["delta"] for o in doc["onnx"]["ops"]}
    assert ops["MatMul"] == sum(len(g.sites) for g in result.groups)
    assert main(["diff", str(a), str(tmp_path / "missing.onnx")]) == 3


def test_transform_report_with_onnx_section(exported):
    model, result, paths = exported
    d = GraphDiff.from_transform(result, original=model, onnx=paths)
    doc = json.loads(d.to_json())
    jsonschema.validate(doc, load_schema())
    assert doc["onnx"]["bytes_saved"] == 4 * (result.params_before - result.params_after)
