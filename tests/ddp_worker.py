"""Child process of tests/test_distributed.py: fine-tune the tiny shared net, save parameters.

    python -m torch.distributed.run --standalone --nproc-per-node=2 ddp_worker.py OUT ddp
    python ddp_worker.py OUT single
"""

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
torch.set_num_threads(1)

from finetune_helpers import tiny_setup  # noqa: E402

from sharedft_fx import FinetuneConfig, finetune  # noqa: E402

out, mode = sys.argv[1], sys.argv[2]
teacher, result, train, val = tiny_setup()
config = FinetuneConfig(epochs=3, batch_size=32, lr=3e-3, optimizer="adamw", warmup_steps=2,
                        keep_best=False, progress=False, seed=1)
tuned = finetune(result.model, teacher, train, val, config,
                 output_dir=os.path.join(out, mode))
rank = int(os.environ.get("RANK", "0"))
torch.save({"initial": {k: v.detach().clone() for k, v in result.model.state_dict().items()},
            "params": {k: v.detach().clone() for k, v in tuned.model.state_dict().items()},
            "history": tuned.history, "world_size": int(os.environ.get("WORLD_SIZE", "1"))},
           os.path.join(out, f"{mode}_rank{rank}.pt"))
