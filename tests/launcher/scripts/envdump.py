"""Dump what a worker sees (environment, argv, sys.path[0], __name__) to OUT_DIR/env_<rank>.json."""

import json
import os
import sys

out_dir = sys.argv[1]
with open(os.path.join(out_dir, f"env_{os.environ['RANK']}.json"), "w") as f:
    json.dump(
        {
            "env": dict(os.environ),
            "argv": sys.argv,
            "path0": sys.path[0],
            "name": __name__,
            "file": __file__,
            "cwd": os.getcwd(),
        },
        f,
    )
print(f"hello from rank {os.environ['RANK']}")
