"""`sharedft-fx finetune` end to end, and its one-line errors on bad data folders."""

from pathlib import Path

import torch
from .finetune_helpers import TinyNet

import sharedft_fx
from sharedft_fx.cli import main

SPEC = f"{Path(__file__).parent / 'finetune_helpers.py'}:TinyNet"


def test_cli_finetune_on_digits_saves_a_loadable_model(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["finetune", SPEC, "--data", "digits", "--digits-size", "8", "--epochs", "1",
                 "--batch-size", "128", "--rank", "2", "--out", str(out), "--no-progress"])
    assert code == 0, capsys.readouterr().err
    text = capsys.readouterr().out
    assert "fine-tuned 10 steps" in text and "val_accuracy" in text
    for name in ("model.safetensors", "recipe.json", "metrics.jsonl", "checkpoint.pt"):
        assert (out / name).is_file(), name
    loaded = sharedft_fx.load(TinyNet(), out)
    assert any(".banks." in k for k in loaded.state_dict())
    x = torch.randn(2, 1, 8, 8)
    assert loaded.eval()(x).shape == (2, 10)


def test_cli_errors_on_empty_and_unreadable_folders(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    code = main(["finetune", SPEC, "--data", str(empty), "--out", str(tmp_path / "o1")])
    err = capsys.readouterr().err
    assert code == 3 and "holds no images" in err and err.count("\n") == 1

    broken = tmp_path / "broken" / "cat"
    broken.mkdir(parents=True)
    (broken / "x.png").write_bytes(b"not a png at all")
    code = main(["finetune", SPEC, "--data", str(tmp_path / "broken"), "--out",
                 str(tmp_path / "o2")])
    err = capsys.readouterr().err
    assert code == 3 and "unreadable" in err
    code = main(["finetune", SPEC, "--data", str(tmp_path / "missing"), "--out",
                 str(tmp_path / "o3")])
    assert code == 3 and "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()
