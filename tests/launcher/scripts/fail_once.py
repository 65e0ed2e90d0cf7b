"""Rank 1 dies in the first attempt after one all-reduce; every later attempt must succeed."""

import os

import torch
import torch.distributed as dist

dist.init_process_group("gloo")
rank = dist.get_rank()
t = torch.ones(4) * rank
dist.all_reduce(t)
attempt = int(os.environ["TORCHELASTIC_RESTART_COUNT"])
if attempt == 0 and rank == 1:
    os._exit(3)
dist.barrier()
t = torch.ones(4)
dist.all_reduce(t)
assert t.tolist() == [2.0] * 4
print(f"rank {rank} attempt {attempt} ok", flush=True)
dist.barrier()  # nobody tears down gloo pairs another rank still uses
dist.destroy_process_group()
