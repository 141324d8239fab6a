"""`sharedft-fx report` on a model spec and on a saved transform directory."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from sharedft_fx.cli import main
from sharedft_fx.report import load_schema

SPEC = f"{Path(__file__).parent / '_report_models.py'}:small_net"


def test_report_from_model_spec(tmp_path):
    out = tmp_path / "r"
    metrics = tmp_path / "m.json"
    metrics.write_text(json.dumps({"accuracy": {"original": 0.9, "shared": 0.89}}))
    assert main(["report", SPEC, "--input-shape", "2,3,16,16", "--out", str(out),
                 "--metrics", str(metrics)]) == 0
    doc = json.loads((out / "report.json").read_text())
    jsonschema.validate(doc, load_schema())
    assert doc["source"] == "transform"
    assert doc["totals"]["conv_sites"] == 7 and doc["totals"]["groups"] == 2
    assert doc["metrics"]["accuracy"]["shared"] == 0.89
    assert doc["nodes"]["counts"]["rewritten"] == 5
    html = (out / "report.html").read_text()
    assert html.count("data-site=") == 7
    assert (out / "report.md").read_text().startswith("# ")


def test_report_from_saved_transform(tmp_path):
    saved = tmp_path / "saved"
    assert main(["transform", SPEC, "--input-shape", "2,3,16,16", "--out", str(saved)]) == 0
    ref = tmp_path / "ref.json"
    assert main(["report", SPEC, "--input-shape", "2,3,16,16", "--json", str(ref)]) == 0
    got = tmp_path / "saved.json"
    assert main(["report", str(saved), "--json", str(got)]) == 0
    a, b = json.loads(got.read_text()), json.loads(ref.read_text())
    jsonschema.validate(a, load_schema())
    assert a["source"] == "saved"
    assert a["totals"] == b["totals"] and a["stages"] == b["stages"]
    assert [s["name"] for s in a["sites"]] == [s["name"] for s in b["sites"]]
    assert [s["reason"] for s in a["sites"]] == [s["reason"] for s in b["sites"]]
    assert all(s["error_init"] is None for s in a["sites"])  # no original weights given
    assert a["nodes"]["counts"] == b["nodes"]["counts"]


def test_report_errors_are_one_line(tmp_path, capsys):
    recipe_dir = tmp_path / "saved"
    assert main(["transform", SPEC, "--input-shape", "2,3,16,16", "--out", str(recipe_dir)]) == 0
    recipe = json.loads((recipe_dir / "recipe.json").read_text())
    recipe["model_spec"] = None
    (recipe_dir / "recipe.json").write_text(json.dumps(recipe))
    capsys.readouterr()
    assert main(["report", str(recipe_dir), "--json", str(tmp_path / "x.json")]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "model_spec" in err[0]
    with pytest.raises(SystemExit):
        main(["report"])
