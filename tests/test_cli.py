"""The sharedft-fx command line: thin over the API, one-line errors, documented exit codes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from sharedft_fx.cli import main
from sharedft_fx.serialization import RECIPE_FILE

SPEC = "tests.models:Conv2dStack"


def test_transform_saves_and_reports(tmp_path, capsys) -> None:
    out = tmp_path / "saved"
    code = main(["transform", SPEC, "--input-shape", "1,3,12,12", "--rank", "2", "--out", str(out)])
    assert code == 0
    recipe = json.loads((out / RECIPE_FILE).read_text())
    assert recipe["model_spec"] == SPEC
    assert recipe["params_after"] < recipe["params_before"]
    assert len(recipe["plan"]["groups"]) == 1


def test_target_ratio_flags(tmp_path) -> None:
    out = tmp_path / "saved"
    assert main(["transform", SPEC, "--input-shape", "1,3,12,12", "--target-ratio", "0.9",
                 "--no-align", "--out", str(out)]) == 0
    recipe = json.loads((out / RECIPE_FILE).read_text())
    assert recipe["config"]["target_ratio"] == 0.9 and recipe["config"]["align"] is False
    assert recipe["params_after"] <= 0.9 * recipe["params_before"]
    assert main(["transform", SPEC, "--input-shape", "1,3,12,12", "--target-ratio", "0.05"]) == 7


@pytest.mark.parametrize(
    "argv, code, needle",
    [
        (["transform", "torchvision:no_such_net"], 3, "torchvision has no model 'no_such_net'"),
        (["transform", SPEC, "--rank", "lots"], 2, "ShareConfig.rank"),
        (["transform", SPEC, "--config", "missing.json"], 3, "config file missing.json does not exist"),
        (["transform", SPEC, "--input-shape", "1,3,a"], 3, "input shape"),
        (["transform", SPEC, "--input-shape", "1,7,12,12"], 3, "does not run on the example inputs"),
        (["transform", "nowhere.py:build"], 3, "model file nowhere.py does not exist"),
        (["transform", SPEC, "--weights", "missing.safetensors"], 3, "weights file missing.safetensors does not exist"),
    ],
)
def test_bad_input_prints_one_line_and_exits_non_zero(argv, code, needle, capsys) -> None:
    assert main(argv) == code
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0] and err[0].startswith("sharedft-fx: error:")


def test_debug_shows_the_traceback(capsys) -> None:
    assert main(["--debug", "transform", "torchvision:no_such_net"]) == 3
    assert "Traceback" in capsys.readouterr().err


def test_untrusted_pickle_is_refused_without_running_it(tmp_path, capsys) -> None:
    marker = tmp_path / "pwned"
    payload = tmp_path / "evil.pt"
    payload.write_bytes(_pickle_that_touches(marker))
    assert main(["transform", SPEC, "--input-shape", "1,3,12,12", "--weights", str(payload)]) == 3
    assert "would run pickled code" in capsys.readouterr().err
    assert not marker.exists()


def _pickle_that_touches(path) -> bytes:
    import pickle

    class Touch:
        def __reduce__(self):
            return (open, (str(path), "w"))

    return pickle.dumps({"state_dict": Touch()})


def test_console_script_is_installed() -> None:
    out = subprocess.run([sys.executable, "-m", "sharedft_fx", "--version"], capture_output=True,
                         text=True, check=True)
    assert out.stdout.startswith("sharedft-fx ")


def test_weights_file_round_trip(tmp_path) -> None:
    from safetensors.torch import save_file

    from tests.models import Conv2dStack

    torch.manual_seed(3)
    model = Conv2dStack()
    save_file(model.state_dict(), str(tmp_path / "w.safetensors"))
    out = tmp_path / "saved"
    assert main(["transform", SPEC, "--input-shape", "1,3,12,12", "--rank", "2",
                 "--weights", str(tmp_path / "w.safetensors"), "--out", str(out)]) == 0
    torch.save({"conv": torch.zeros(2)}, tmp_path / "wrong.pt")
    assert main(["transform", SPEC, "--weights", str(tmp_path / "wrong.pt")]) == 3
