"""The HTML report in a real browser: headless Chromium opens it from a file URL.

Skips (saying why) only when Chromium is not installed or cannot start here. The screenshot goes
to $SHAREDFT_TEST_ARTIFACTS (default: the test's tmp dir).
"""

from __future__ import annotations

import os
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch
from torch import nn

import sharedft_fx
from sharedft_fx.report import GraphDiff

from ._chromium import chromium_problem, find_chromium, render

CHROMIUM = find_chromium()
_PROBLEM = chromium_problem(CHROMIUM)
needs_chromium = pytest.mark.skipif(_PROBLEM is not None, reason=_PROBLEM or "")


def test_skip_reasons_say_why(tmp_path):
    assert "not installed" in chromium_problem(None)
    broken = tmp_path / "chromium"
    broken.write_text("#!/bin/sh\necho 'cannot open display' >&2\nexit 1\n")
    broken.chmod(0o755)
    reason = chromium_problem(str(broken))
    assert "cannot render" in reason and "cannot open display" in reason


class _SvgSites(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.depth = 0
        self.sites: list[str] = []
        self.body: dict = {}

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "svg":
            self.depth += 1
        if tag == "body":
            self.body = a
        if self.depth and "data-site" in a:
            self.sites.append(a["data-site"])

    def handle_endtag(self, tag):
        if tag == "svg":
            self.depth -= 1


@needs_chromium
def test_console_errors_are_detected(tmp_path):
    bad = tmp_path / "bad.html"
    bad.write_text("<!DOCTYPE html><p>x</p><script>missingFunction();</script>", encoding="utf-8")
    got = render(CHROMIUM, bad)
    assert any("missingFunction" in m for m in got.console)


@needs_chromium
def test_resnet50_report_renders(tmp_path):
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None).eval()
    result = sharedft_fx.transform(model, torch.randn(1, 3, 32, 32))
    diff = GraphDiff.from_transform(result, original=model)
    page = Path(diff.write(tmp_path / "resnet50.html"))
    out = Path(os.environ.get("SHAREDFT_TEST_ARTIFACTS", tmp_path))
    out.mkdir(parents=True, exist_ok=True)
    shot = out / "report-resnet50.png"
    got = render(CHROMIUM, page, screenshot=shot)
    assert got.console == ()
    dom = _SvgSites()
    dom.feed(got.dom)
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 53
    assert dom.sites == convs  # one SVG element per conv site, in execution order
    assert dom.body.get("data-ready") == "1"  # the page's script ran to the end
    assert dom.body.get("data-sites") == str(len(convs))
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
