"""GraphDiff accounting, node diff, JSON schema, Markdown/HTML structure (no browser)."""

from __future__ import annotations

import copy
import dataclasses
import json
import re
from html.parser import HTMLParser

import jsonschema
import pytest
import torch
from torch import nn

import sharedft_fx
from sharedft_fx.errors import InputError
from sharedft_fx.report import ExportInfo, GraphDiff, Metrics, load_schema, site_weight_errors

from ._report_models import small_net

X = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def small():
    model = small_net().eval()
    result = sharedft_fx.transform(model, X)
    return model, result


@pytest.fixture(scope="module")
def resnet():
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    result = sharedft_fx.transform(model, torch.randn(1, 3, 32, 32))
    return model, result


def _conv_modules(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]


def test_resnet_sites_groups_and_totals(resnet):
    model, result = resnet
    d = GraphDiff.from_transform(result, original=model)
    assert [s.name for s in d.sites] == _conv_modules(model)  # execution order = module order
    shared = {s.name for g in result.groups for s in g.sites}
    assert {s.name for s in d.sites if s.shared} == shared
    assert {s.name: s.reason for s in d.sites if not s.shared} == result.skipped
    t = d.totals
    assert (t.params_before, t.params_after) == (result.params_before, result.params_after)
    assert (t.conv_sites, t.shared_sites, t.groups) == (20, len(shared), len(result.groups))
    assert t.bytes_before == 4 * result.params_before and t.bytes_after == 4 * result.params_after
    assert sum(s.params_before for s in d.stages) == result.params_before
    assert sum(s.params_after for s in d.stages) == result.params_after
    assert [s.name for s in d.stages] == ["conv1", "bn1", "layer1", "layer2", "layer3", "layer4",
                                          "fc"]
    by_name = {g.name: g for g in result.groups}
    for g in d.groups:
        ref = by_name[g.name]
        assert (g.params_before, g.params_after, g.sites) == (
            ref.params_before, ref.params_after, tuple(s.name for s in ref.sites))
        assert g.bank_params == ref.bank_params
        rows = [s for s in d.sites if s.group == g.name]
        assert sum(s.params_after for s in rows) == pytest.approx(g.params_after)
        assert all(s.bank_share == pytest.approx(g.bank_params / len(rows)) for s in rows)
    errors = {s.name: s.weight_error for g in result.groups for s in g.sites}
    assert {s.name: s.error_init for s in d.sites if s.shared} == errors
    # stage changes are the groups' savings (resnet18 groups are stage-local)
    saved = {g.name.split("_")[0]: g.saved for g in d.groups}
    stage_saved = {s.name: s.params_before - s.params_after for s in d.stages}
    assert stage_saved["layer1"] == saved["g0"] and stage_saved["layer4"] == saved["g3"]
    assert stage_saved["conv1"] == stage_saved["fc"] == 0


def test_resnet_node_diff(resnet):
    model, result = resnet
    d = GraphDiff.from_transform(result, original=model)
    c = d.node_counts
    rewritten = [n for n in d.nodes if n.kind == "rewritten"]
    added = [n for n in d.nodes if n.kind == "added"]
    assert {n.site for n in rewritten} == {s.name for s in d.sites if s.shared}
    assert all(n.op == "call_module" and n.target == n.site for n in rewritten)
    assert all(len(n.after) == 2 for n in rewritten)  # link + functional conv
    assert sorted(n.target for n in added) == sorted(f"sharedft.banks.{g.name}" for g in d.groups)
    assert c.removed == 0 and c.rewritten == len(rewritten) and c.added == len(added)
    assert c.before == c.unchanged + c.removed + c.rewritten
    assert c.after == c.unchanged + c.added + sum(len(n.after) for n in rewritten)
    assert c.before == len(torch.fx.symbolic_trace(model).graph.nodes)


def test_small_model_bias_padding_and_read_use(small):
    model, result = small
    d = GraphDiff.from_transform(result, original=model)
    kinds = {n.site: n for n in d.nodes if n.kind == "rewritten"}
    assert kinds["stage1.4"].op == "get_attr" and kinds["stage1.4"].target == "stage1.4.weight"
    assert kinds["stage1.4"].after == ("call_module sharedft.links.stage1_4",)
    added = sorted(n.target for n in d.nodes if n.kind == "added")
    assert added == sorted(["sharedft.banks.g0_16x16x3x3", "sharedft.banks.g1_32x32x3x3",
                            "stage1.2.bias", "torch.nn.functional.pad"])
    assert d.node_counts.removed == 0


@pytest.mark.parametrize("fixture", ["small", "resnet"])
def test_without_original_same_accounting(fixture, request):
    model, result = request.getfixturevalue(fixture)
    with_original = GraphDiff.from_transform(result, original=model)
    alone = GraphDiff.from_transform(result)
    assert alone.sites == with_original.sites
    assert alone.stages == with_original.stages
    assert alone.totals == with_original.totals
    assert alone.nodes == () and alone.node_counts is None


def test_saved_transform_matches_result(small, tmp_path):
    model, result = small
    sharedft_fx.save(result, tmp_path / "saved", model_spec="x:y")
    loaded = sharedft_fx.load(small_net().eval(), tmp_path / "saved")
    d = GraphDiff.from_modules(model, loaded, config=result.config,
                               skipped=result.plan.skipped, source="saved",
                               permutations=result.alignment.permutations)
    ref = GraphDiff.from_transform(result, original=model)
    assert d.totals == ref.totals and d.stages == ref.stages
    no_err = [dataclasses.replace(g, max_error_init=None) for g in d.groups]
    assert no_err == [dataclasses.replace(g, max_error_init=None) for g in ref.groups]
    for a, b in zip(d.groups, ref.groups):
        assert a.max_error_init == pytest.approx(b.max_error_init, rel=1e-5)
    for a, b in zip(d.sites, ref.sites):
        assert a.name == b.name and a.params_after == b.params_after
        if a.shared:  # measured from the saved weights: the transform's init error
            assert a.error_init == pytest.approx(b.error_init, rel=1e-5, abs=1e-7)
    assert d.node_counts == ref.node_counts


def test_finetuned_errors_measured(small):
    model, result = small
    tuned = copy.deepcopy(result.model)
    link = tuned.sharedft.links.stage2_0
    with torch.no_grad():
        link.B.add_(0.05)
    d = GraphDiff.from_transform(result, original=model, finetuned=tuned)
    row = next(s for s in d.sites if s.name == "stage2.0")
    w = model.stage2[0].weight.detach().double()
    for dim, order in result.alignment.permutations.get("stage2.0.weight", ()):
        w = w.index_select(dim, torch.tensor(order))  # the transform aligned its channels
    eff = link(tuned.sharedft.banks.g1_32x32x3x3).detach().double()
    assert row.error_finetuned == pytest.approx(((w - eff).norm() / w.norm()).item(), rel=1e-9)
    assert row.error_finetuned != pytest.approx(row.error_init)
    untouched = next(s for s in d.sites if s.name == "stage2.2")
    assert untouched.error_finetuned == pytest.approx(untouched.error_init, rel=1e-5)
    group = next(g for g in d.groups if g.name == "g1_32x32x3x3")
    assert group.max_error_finetuned == max(row.error_finetuned, untouched.error_finetuned)
    with pytest.raises(InputError):
        GraphDiff.from_transform(result, finetuned=tuned)


def test_site_weight_errors_exact_at_full_rank(small):
    model, _ = small
    full = sharedft_fx.transform(model, X, sharedft_fx.ShareConfig(rank="full"))
    errors = site_weight_errors(model, full.model, full.alignment.permutations)
    assert len(errors) == 5 and max(errors.values()) < 1e-6


def test_json_follows_schema_and_schema_is_strict(small):
    model, result = small
    d = GraphDiff.from_transform(
        result, original=model,
        metrics={"accuracy": {"original": 0.91, "shared": 0.88}, "latency_ms": {"shared": 1.5}},
    )
    doc = json.loads(d.to_json())
    schema = load_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.validate(doc, schema)
    assert doc["schema_version"] == 1 and doc["format"] == "sharedft-fx.graph-diff"
    assert doc["totals"]["params_after"] == result.params_after
    assert doc["metrics"]["accuracy"] == {"original": 0.91, "shared": 0.88}
    assert len(doc["sites"]) == 7 and len(doc["groups"]) == 2
    broken = copy.deepcopy(doc)
    del broken["totals"]["params_before"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)
    broken = copy.deepcopy(doc)
    broken["sites"][0]["surprise"] = 1
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)


def test_export_info_group_bytes(small):
    model, result = small
    sizes = {n: p.numel() * p.element_size() for n, p in result.model.named_parameters()}
    d = GraphDiff.from_transform(result, original=model, export={"initializer_bytes": sizes})
    by_group = d.export_group_bytes()
    for g in d.groups:
        assert by_group[g.name] == 4 * g.params_after
    assert d.export.total_bytes == 4 * result.params_after
    with pytest.raises(InputError):
        ExportInfo.coerce({"path": "x.onnx"})
    with pytest.raises(InputError):
        Metrics.coerce({"acc": {}})


def _md_tables(text: str) -> dict[str, list[list[str]]]:
    """Section heading -> rows of the first table under it (header and rule dropped)."""
    tables: dict[str, list[list[str]]] = {}
    heading = None
    for line in text.splitlines():
        if line.startswith("#"):
            heading = line.lstrip("#").strip()
        elif line.startswith("|") and heading is not None:
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
            tables.setdefault(heading, []).append(cells)
    return {k: rows[2:] for k, rows in tables.items()}


def test_markdown_tables_hold_the_numbers(resnet):
    model, result = resnet
    d = GraphDiff.from_transform(result, original=model)
    tables = _md_tables(d.to_markdown())
    groups = tables["Groups"]
    assert [r[0] for r in groups] == [g.name for g in d.groups]
    assert [int(r[6].replace(",", "")) for r in groups] == [g.params_after for g in d.groups]
    sites = tables["Conv sites (execution order)"]
    assert [r[1].strip("`") for r in sites] == [s.name for s in d.sites]
    stages = tables["Parameters per stage"]
    assert [int(r[2].replace(",", "")) for r in stages] == [s.params_after for s in d.stages]
    totals = tables["Totals"]
    assert int(totals[0][2].replace(",", "")) == result.params_after
    assert len(tables["Graph changes"]) == len(d.nodes)


class _Elements(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def test_html_is_self_contained_with_one_element_per_site(resnet):
    model, result = resnet
    d = GraphDiff.from_transform(result, original=model)
    page = d.to_html()
    parser = _Elements()
    parser.feed(page)
    sites = [a["data-site"] for t, a in parser.tags if "data-site" in a]
    assert sites == [s.name for s in d.sites]
    assert sum(1 for t, _ in parser.tags if t == "svg") == 2
    bars = [a for t, a in parser.tags if "data-stage" in a]
    assert len(bars) == 2 * len(d.stages)
    assert {int(a["data-value"]) for a in bars if "after" in a["class"]} == {
        s.params_after for s in d.stages}
    # nothing to fetch: no src/href attributes, no URLs but the SVG namespace; CSP forbids it
    assert not [a for _, a in parser.tags if "src" in a or "href" in a]
    urls = set(re.findall(r"https?://[^\s\"'<>]+", page))
    assert urls <= {"http://www.w3.org/2000/svg"}
    csp = next(a for t, a in parser.tags if a.get("http-equiv") == "Content-Security-Policy")
    assert "default-src 'none'" in csp["content"]


def test_write_formats(small, tmp_path):
    model, result = small
    d = GraphDiff.from_transform(result, original=model)
    for fmt in ("json", "md", "html"):
        path = d.write(tmp_path / f"r.{fmt}")
        assert (tmp_path / f"r.{fmt}").stat().st_size > 0 and path.endswith(fmt)
    assert json.loads((tmp_path / "r.json").read_text())["totals"]["groups"] == 2
    assert not list(tmp_path.glob("*.partial"))
    with pytest.raises(InputError):
        d.write(tmp_path / "r.pdf")


class _Untraceable(nn.Module):
    """Top-level forward with data-dependent control flow: only `a` and `b` become graphs."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = small_net(), small_net()

    def forward(self, x):
        if x.sum() > 0:
            return self.a(x) + self.b(x)
        return self.a(x)


def test_partitions_share_banks_across_graphs():
    model = _Untraceable().eval()
    result = sharedft_fx.transform(model, X.abs())
    assert result.trace.traced == ("a", "b")
    d = GraphDiff.from_transform(result, original=model)
    assert len(d.sites) == 14 and d.totals.shared_sites == 12
    assert (d.totals.params_before, d.totals.params_after) == (
        result.params_before, result.params_after)
    # the banks are shared by sites of both graphs; each stage gets its sites' share
    assert [(s.name, s.params_before) for s in d.stages] == [("a", 30778), ("b", 30778)]
    assert d.stages[0].params_after == d.stages[1].params_after
    assert sum(s.params_after for s in d.stages) == result.params_after
    assert {n.graph for n in d.nodes} == {"a", "b"}
    assert GraphDiff.from_transform(result).stages == d.stages
    jsonschema.validate(json.loads(d.to_json()), load_schema())


def test_unshared_untraceable_modules_report_without_node_diff():
    model = _Untraceable().eval()
    d = GraphDiff.from_modules(model, model)
    assert d.groups == () and d.node_counts is None
    assert d.totals.params_before == d.totals.params_after
    assert d.totals.conv_sites == 12  # plain nn.Conv2d modules (no annotations to read)


def test_graph_without_annotations_reads_the_same(small):
    """A shared model whose node.meta was lost (e.g. unpickled) is read from its structure."""
    model, result = small
    stripped = copy.deepcopy(result.model)
    for node in stripped.graph.nodes:
        node.meta.clear()
    ref = GraphDiff.from_modules(model, result.model, skipped=result.plan.skipped)
    got = GraphDiff.from_modules(model, stripped, skipped=result.plan.skipped)
    assert [s.name for s in got.sites] == [s.name for s in ref.sites]
    assert [s.group for s in got.sites] == [s.group for s in ref.sites]
    assert got.groups == ref.groups and got.totals == ref.totals
    assert got.stages == ref.stages
    assert {n.site for n in got.nodes if n.kind == "rewritten"} == {
        n.site for n in ref.nodes if n.kind == "rewritten"}
