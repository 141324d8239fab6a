"""save -> load round-trips exactly; broken saves are refused with a clear error."""

from __future__ import annotations

import json

import pytest
import torch

import sharedft_fx
from sharedft_fx import InputError, ShareConfig, load, save, transform
from sharedft_fx.serialization import RECIPE_FILE, WEIGHTS_FILE

from .models import CASES, build_case


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_save_load_round_trip_is_exact(case, tmp_path) -> None:
    model, x = build_case(case)
    result = transform(model, x, ShareConfig(rank=2, min_site_params=0, skip_first_conv=False))
    save(result, tmp_path / "saved")
    fresh, _ = build_case(case, seed=123)  # different random weights: all are overwritten
    loaded = load(fresh, tmp_path / "saved").eval()
    args = x if isinstance(x, tuple) else (x,)
    with torch.no_grad():
        torch.testing.assert_close(loaded(*args), result.model(*args), rtol=0, atol=0)
    assert sharedft_fx.count_parameters(loaded) == result.params_after


def test_round_trip_with_gates_and_scale_links(tmp_path) -> None:
    model, x = build_case(CASES[0])
    cfg = ShareConfig(rank=2, link="lowrank+scale", skip_gates=True, min_site_params=0)
    result = transform(model, x, cfg)
    with torch.no_grad():  # make the gates matter
        for name, p in result.model.named_parameters():
            if name.endswith(".gate"):
                p.fill_(0.25)
    save(result, tmp_path)
    loaded = load(build_case(CASES[0], seed=5)[0], tmp_path).eval()
    torch.testing.assert_close(loaded(x), result.model(x), rtol=0, atol=0)


def test_recipe_records_config_and_plan(tmp_path) -> None:
    model, x = build_case(CASES[0])
    result = transform(model, x, ShareConfig(rank=3, min_site_params=0))
    save(result, tmp_path, model_spec="tests.models:Conv2dStack")
    recipe = json.loads((tmp_path / RECIPE_FILE).read_text())
    assert ShareConfig.from_dict(recipe["config"]) == result.config
    assert recipe["model_spec"] == "tests.models:Conv2dStack"
    assert [len(g["sites"]) for g in recipe["plan"]["groups"]] == [4]
    assert recipe["params_after"] == result.params_after
    assert not list(tmp_path.glob("*.partial"))


def test_load_refuses_mismatched_or_missing_files(tmp_path) -> None:
    model, x = build_case(CASES[0])
    result = transform(model, x, ShareConfig(rank=3, min_site_params=0))
    save(result, tmp_path)
    with pytest.raises(InputError, match="does not exist"):
        load(model, tmp_path / "nowhere")
    (tmp_path / WEIGHTS_FILE).write_bytes((tmp_path / WEIGHTS_FILE).read_bytes()[:-10] + b"0" * 10)
    with pytest.raises(InputError, match="checksum differs"):
        load(model, tmp_path)
    (tmp_path / WEIGHTS_FILE).unlink()
    with pytest.raises(InputError, match="is missing"):
        load(model, tmp_path)
    (tmp_path / RECIPE_FILE).write_text("{not json")
    with pytest.raises(InputError, match="cannot be read as JSON"):
        load(model, tmp_path)


def test_load_onto_another_architecture_is_refused(tmp_path) -> None:
    model, x = build_case(CASES[0])
    save(transform(model, x, ShareConfig(rank=3, min_site_params=0)), tmp_path)
    other, _ = build_case(next(c for c in CASES if c.name == "tied"))
    with pytest.raises(InputError, match="does not have as a convolution site; is it the same architecture"):
        load(other, tmp_path)


def test_save_keeps_previous_files_when_writing_fails(tmp_path, monkeypatch) -> None:
    model, x = build_case(CASES[0])
    result = transform(model, x, ShareConfig(rank=3, min_site_params=0))
    save(result, tmp_path)
    before = (tmp_path / WEIGHTS_FILE).read_bytes()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("sharedft_fx.serialization.save_model", boom)
    with pytest.raises(OSError, match="disk full"):
        save(result, tmp_path)
    assert (tmp_path / WEIGHTS_FILE).read_bytes() == before
    assert not list(tmp_path.glob("*.partial"))
