"""Acceptance 4: a fine-tune killed mid-way and resumed from its checkpoint ends with the same
parameters as an uninterrupted run (CPU, one thread, noise augmentation from the global RNG)."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from .finetune_helpers import resume_case

from sharedft_fx import finetune
from sharedft_fx.finetuning import load_checkpoint

HERE = Path(__file__).parent


def _assert_same(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    teacher, model, train, val, config = resume_case()
    result = finetune(model, teacher, train, val, config,
                      output_dir=tmp_path_factory.mktemp("full"))
    assert result.steps == 8 and not result.interrupted
    return result


@pytest.mark.timeout(240)
def test_sigkill_then_resume_matches_uninterrupted(tmp_path, uninterrupted):
    # item reads: 16 for the preflight probe, then 16 a step; die while reading step 8's batch,
    # after the step-6 checkpoint (mid-epoch 2: 2 of its 4 batches done)
    kill_at = 16 + 7 * 16 + 5
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE.parent), str(HERE)]),
               OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(HERE / "resume_worker.py"), str(tmp_path),
                           str(kill_at)], env=env, capture_output=True, text=True, timeout=200)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    ck = load_checkpoint(tmp_path / "checkpoint.pt")
    assert (ck["step"], ck["epoch"], ck["batches_done"]) == (6, 1, 2)

    teacher, model, train, val, config = resume_case()
    resumed = finetune(model, teacher, train, val, config, output_dir=tmp_path, resume=True)
    assert resumed.steps == 8 and not resumed.interrupted
    _assert_same(resumed.model, uninterrupted.model)
    assert [h["train_loss"] for h in resumed.history] == \
        [h["train_loss"] for h in uninterrupted.history]
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 8 + 2  # 8 step records, 2 epoch records, no duplicates after resume


def test_sigterm_writes_checkpoint_and_resume_matches(tmp_path, uninterrupted):
    # SIGTERM while reading step 3's batch: the step finishes, a checkpoint is written, and
    # finetune returns interrupted
    stop = (16 + 2 * 16 + 1, lambda: signal.raise_signal(signal.SIGTERM))
    teacher, model, train, val, config = resume_case(on_item=stop)
    first = finetune(model, teacher, train, val, config, output_dir=tmp_path)
    assert first.interrupted and first.steps == 3
    assert load_checkpoint(tmp_path / "checkpoint.pt")["step"] == 3
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handler restored

    teacher, model, train, val, config = resume_case()
    resumed = finetune(model, teacher, train, val, config, output_dir=tmp_path, resume=True)
    assert resumed.steps == 8
    _assert_same(resumed.model, uninterrupted.model)


def test_resume_with_other_batch_size_is_refused(tmp_path, uninterrupted):
    from sharedft_fx import ConfigError

    teacher, model, train, val, config = resume_case()
    finetune(model, teacher, train, val, config.replace(max_steps=1), output_dir=tmp_path)
    with pytest.raises(ConfigError, match="batch_size=16"):
        finetune(model, teacher, train, val, config.replace(batch_size=32), output_dir=tmp_path,
                 resume=True)
