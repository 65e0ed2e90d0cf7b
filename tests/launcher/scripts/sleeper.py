"""Writes OUT/pid_<rank> and sleeps: a worker that only a signal ends."""

import os
import sys
import time

with open(os.path.join(sys.argv[1], f"pid_{os.environ['RANK']}"), "w") as f:
    f.write(str(os.getpid()))
time.sleep(300)
