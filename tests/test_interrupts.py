"""A killed export leaves the previous file intact and no partial file (subprocess + signal).

The fine-tune's kill-and-resume checks are in test_finetune_resume.py.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from sharedft_fx import export_onnx

from .models import Conv2dStack

ROOT = Path(__file__).resolve().parents[1]


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def start_export(out: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-m", "sharedft_fx", "export", "torchvision:resnet18",
         "--input-shape", "1,3,64,64", "--out", str(out), "--random-inputs", "8"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )


def wait_for_partial(folder: Path, proc: subprocess.Popen, limit: float = 240) -> None:
    start = time.monotonic()
    while time.monotonic() - start < limit:
        if any(p.name.endswith(".partial") for p in folder.iterdir()):
            return
        if proc.poll() is not None:
            pytest.fail(f"export ended before it could be interrupted: {proc.stderr.read()!r}")
        time.sleep(0.05)
    proc.kill()
    pytest.fail("the export never started writing")


@pytest.fixture
def previous(tmp_path: Path) -> tuple[Path, str]:
    out = tmp_path / "model.onnx"
    export_onnx(Conv2dStack().eval(), torch.randn(1, 3, 12, 12), out)
    return out, sha(out)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_interrupted_export_cleans_up_and_keeps_the_previous_file(previous, sig) -> None:
    out, before = previous
    proc = start_export(out)
    wait_for_partial(out.parent, proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert sha(out) == before
    assert sorted(p.name for p in out.parent.iterdir()) == ["model.onnx"]


def test_killed_export_keeps_the_previous_file(previous) -> None:
    out, before = previous
    proc = start_export(out)
    wait_for_partial(out.parent, proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert sha(out) == before
    # SIGKILL runs no cleanup: what is left is hidden and never mistaken for the output
    left = [p.name for p in out.parent.iterdir() if p.name != "model.onnx"]
    assert all(name.startswith(".") and name.endswith(".partial") for name in left)
