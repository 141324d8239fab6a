"""The generated pass catalog in passes/ matches the pass classes."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

import gen_pass_docs  # noqa: E402

from sharedft_fx.passes import ALL_PASSES  # noqa: E402


def test_catalog_is_up_to_date() -> None:
    assert gen_pass_docs.main(["--check"]) == 0, "run: python tools/gen_pass_docs.py"


def test_every_pass_documents_itself() -> None:
    for cls in ALL_PASSES:
        assert cls.name and cls.kind in ("analysis", "rewrite")
        for field in ("matches", "preconditions", "invariants", "before", "after"):
            assert getattr(cls, field).strip(), f"{cls.__name__}.{field} is empty"


def test_check_detects_a_stale_catalog(tmp_path) -> None:
    assert gen_pass_docs.main(["--out", str(tmp_path)]) == 0
    assert gen_pass_docs.main(["--check", "--out", str(tmp_path)]) == 0
    page = tmp_path / f"{ALL_PASSES[0].name}.md"
    page.write_text(page.read_text() + "edited by hand\n")
    assert gen_pass_docs.main(["--check", "--out", str(tmp_path)]) == 1
