"""Rank 1 raises a ValueError: the root cause the launcher must name."""

import os


def load_batch(rank: int) -> None:
    if rank == 1:
        raise ValueError("bad batch at step 3")


load_batch(int(os.environ["RANK"]))
print(f"rank {os.environ['RANK']} done")
