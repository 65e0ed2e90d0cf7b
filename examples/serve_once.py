"""Serve a trained checkpoint with 2 replicas behind the router and answer one request.

    python examples/serve_once.py --checkpoint runs/tiny_gpt/checkpoints [--prompt "def "]

Starts two model-server processes on free ports and the router in front of them, waits for
the router's /health, sends one completion through it, prints the prompt and the completion,
then shuts everything down. Exit code 0 when the completion came back.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

import aiohttp

from infermesh.core.errors import InferMeshError
from infermesh.serve.replicas import ReplicaSet
from infermesh.serve.router import RouterConfig
from infermesh.serve.server import ServerConfig


async def serve_once(checkpoint: str, prompt: str, max_tokens: int, replicas: int) -> str:
    rs = ReplicaSet(ServerConfig(checkpoint=checkpoint), replicas, RouterConfig(port=0))
    port = await rs.start()
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as s:
            deadline = time.monotonic() + 30
            while True:
                async with s.get(url + "/health") as r:
                    if r.status == 200:
                        break
                if time.monotonic() > deadline:
                    raise InferMeshError(f"router at {url} not healthy after 30s")
                await asyncio.sleep(0.1)
            body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0.8, "seed": 0}
            async with s.post(url + "/v1/completions", json=body) as r:
                out = await r.json()
                if r.status != 200:
                    raise InferMeshError(f"completion failed: HTTP {r.status}: {out}")
        return str(out["choices"][0]["text"])
    finally:
        await rs.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default="runs/tiny_gpt/checkpoints")
    p.add_argument("--prompt", default="def ")
    p.add_argument("--max-tokens", type=int, default=80)
    p.add_argument("--replicas", type=int, default=2)
    args = p.parse_args(argv)
    try:
        text = asyncio.run(serve_once(args.checkpoint, args.prompt, args.max_tokens, args.replicas))
    except InferMeshError as e:
        print(f"serve_once: error: {e}", file=sys.stderr)
        return 2
    print(f"prompt: {args.prompt!r}")
    print(f"completion ({args.replicas} replicas behind the router):")
    print(args.prompt + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
