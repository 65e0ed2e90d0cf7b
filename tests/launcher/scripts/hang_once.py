"""Beats a few steps, then hangs in the first attempt; the second attempt finishes."""

import os
import sys
import time

from infermesh.train import heartbeat

attempt = int(os.environ["TORCHELASTIC_RESTART_COUNT"])
always = len(sys.argv) > 1 and sys.argv[1] == "always"
for step in range(5):
    heartbeat(step)
if attempt == 0 or always:
    print(f"rank {os.environ['RANK']} hanging", flush=True)
    time.sleep(600)  # the hang under test: the launcher must notice and stop this
print(f"rank {os.environ['RANK']} attempt {attempt} finished", flush=True)
