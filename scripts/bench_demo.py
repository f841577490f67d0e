"""Seconds from ``vqa demo`` to the app's first answer, as on a fresh machine.

    python scripts/bench_demo.py --out docs/results/bench-demo/cpu.json

It runs ``vqa demo`` in a new process with an empty cache (``HYBRID_VQA_CACHE`` in a temporary
directory: no dataset, no trained model), waits until the app answers HTTP, then asks it one
question about an example scene through ``gradio_client``, and prints JSON: the seconds until
the app was up and until that first answer, the answer, and the machine. The package install
(``make install``) is not timed: ``make demo`` does it once, before this starts.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import torch

from vqa.files import write_json
from vqa.machine import machine

QUESTION = "what colour is the large circle?"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until_up(url: str, demo: subprocess.Popen, limit: float) -> None:
    """Poll ``url`` until it answers; raise if the demo exits or ``limit`` seconds pass."""
    deadline = time.perf_counter() + limit
    while time.perf_counter() < deadline:
        if demo.poll() is not None:
            raise RuntimeError(f"vqa demo exited with status {demo.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise TimeoutError(f"the app at {url} did not answer within {limit:.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=float, default=900, help="seconds to wait for the app")
    parser.add_argument("--out", type=Path, help="also write the JSON result here")
    args = parser.parse_args()
    from gradio_client import Client, handle_file

    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    with tempfile.TemporaryDirectory() as cache:
        environment = {**os.environ, "HYBRID_VQA_CACHE": cache, "HF_HUB_OFFLINE": "1"}
        start = time.perf_counter()
        demo = subprocess.Popen(
            [sys.executable, "-m", "vqa", "demo", "--port", str(port)],
            env=environment,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            wait_until_up(url, demo, args.limit)
            up = time.perf_counter() - start
            scene = min((Path(cache) / "datasets").glob("*/images/test/*.png"))  # same each run
            client = Client(url, verbose=False)
            answer = client.predict(
                handle_file(str(scene)), QUESTION, "hybrid", 16, api_name="/answer"
            )
            first_answer = time.perf_counter() - start
        finally:
            demo.terminate()
            output, _ = demo.communicate(timeout=30)
    result = {
        "seconds_to_app": round(up, 1),
        "seconds_to_first_answer": round(first_answer, 1),
        "question": QUESTION,
        "answer": str(answer[0])[:200],
        "demo_output": output.splitlines()[:12],
        "machine": machine(torch.device("cpu")),
    }
    if args.out:
        write_json(args.out, result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
