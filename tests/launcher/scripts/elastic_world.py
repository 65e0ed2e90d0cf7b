"""Runs until the world has MAX nodes' workers, then does a few all-reduces and exits.

Writes OUT_DIR/world_<size>_rank_<rank> when it starts, so a test can wait on it.
"""

import os
import sys
import time

import torch
import torch.distributed as dist

out_dir, want = sys.argv[1], int(sys.argv[2])
dist.init_process_group("gloo")
world, rank = dist.get_world_size(), dist.get_rank()
open(os.path.join(out_dir, f"world_{world}_rank_{rank}"), "w").close()
deadline = time.monotonic() + 120
while world < want and time.monotonic() < deadline:
    t = torch.ones(1)
    dist.all_reduce(t)  # keep training at the small size until the launcher restarts us
    time.sleep(0.05)
if world < want:
    sys.exit(f"world never grew to {want}")
for _ in range(3):
    t = torch.ones(1)
    dist.all_reduce(t)
assert t.item() == world
print(f"rank {rank} of {world} ok", flush=True)
dist.barrier()  # nobody tears down gloo pairs another rank still uses
dist.destroy_process_group()
