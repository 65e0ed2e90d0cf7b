"""Beats, writes OUT/ready_<rank>, then waits (beating) until OUT/go exists (at most 60 s)."""

import os
import sys
import time

from infermesh.train import heartbeat

out = sys.argv[1]
open(os.path.join(out, f"ready_{os.environ['RANK']}"), "w").close()
deadline = time.monotonic() + 60
step = 0
while not os.path.exists(os.path.join(out, "go")) and time.monotonic() < deadline:
    heartbeat(step)
    step += 1
    time.sleep(0.05)
