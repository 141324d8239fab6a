"""Acceptance 3: two CPU processes under torchrun (gloo) end with identical parameters, the loss
goes down, and the result equals one process with the same global batch."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).parent
ROOT = HERE.parent


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(HERE), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    return env


@pytest.mark.timeout(300)
def test_torchrun_two_processes_match_single_process(tmp_path):
    worker = str(HERE / "ddp_worker.py")
    ddp = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
         worker, str(tmp_path), "ddp"],
        env=_env(), capture_output=True, text=True, timeout=280,
    )
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    single = subprocess.run([sys.executable, worker, str(tmp_path), "single"], env=_env(),
                            capture_output=True, text=True, timeout=280)
    assert single.returncode == 0, single.stderr[-3000:]

    r0 = torch.load(tmp_path / "ddp_rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "ddp_rank1.pt", weights_only=True)
    one = torch.load(tmp_path / "single_rank0.pt", weights_only=True)
    assert r0["world_size"] == 2 and one["world_size"] == 1
    # both ranks end with identical parameters (DDP reduced every gradient, banks included)
    assert r0["params"].keys() == r1["params"].keys()
    for k in r0["params"]:
        assert torch.equal(r0["params"][k], r1["params"][k]), k
    # the training loss went down
    losses = [h["train_loss"] for h in r0["history"]]
    assert len(losses) == 3 and losses[-1] < losses[0]
    # two processes of 16 samples == one process of 32 samples, to 1e-5
    for k, v in one["params"].items():
        torch.testing.assert_close(r0["params"][k], v, atol=1e-5, rtol=0, msg=k)
    assert [h["train_loss"] for h in one["history"]] == pytest.approx(losses, abs=1e-5)
    # training really moved the shared bank (so the comparison means something)
    banks = [k for k in one["params"] if ".banks." in k]
    assert banks, "the tiny model must have a shared bank"
    assert max(float((r0["params"][k] - r0["initial"][k]).abs().max()) for k in banks) > 1e-3
    assert (tmp_path / "ddp" / "checkpoint.pt").is_file()
    assert (tmp_path / "ddp" / "metrics.jsonl").is_file()
