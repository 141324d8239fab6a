"""Child process of tests/test_finetune_resume.py: a fine-tune that SIGKILLs itself mid-way.

    python resume_worker.py OUT ITEMS    # dies on the ITEMS-th training item read
"""

import os
import signal
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
torch.set_num_threads(1)

from finetune_helpers import resume_case  # noqa: E402

from sharedft_fx import finetune  # noqa: E402


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


out, items = sys.argv[1], int(sys.argv[2])
teacher, model, train, val, config = resume_case(on_item=(items, die))
finetune(model, teacher, train, val, config, output_dir=out)
sys.exit(3)  # not reached: the run must die first
