"""Latency and throughput of the Gradio app under concurrent clients; prints one JSON object.

Starts ``vqa serve`` on a free loopback port (or uses ``--url``, which must be loopback too),
uploads one image, then ``--clients`` threads each ask ``--requests`` questions through the
app's HTTP API (``/gradio_api/call/answer``), one after another, and time each answer. The
run stops early at ``--time-limit`` seconds; unanswered requests count as errors. With
``--duration``, each client instead asks questions back to back for that many seconds (a soak
test), and the summary has the server's resident memory (RSS) after the warm-up and at the end.

    python scripts/bench_app.py                              # the default model (vqa demo)
    python scripts/bench_app.py --model RUN --clients 16 --requests 20
    python scripts/bench_app.py --model RUN --clients 32 --duration 60 --out RESULT.json

Output: ``{"clients", "requests", "p50_ms", "p95_ms", "p99_ms", "throughput_rps", "errors",
"server_rss_mb_start", "server_rss_mb_end", "server_rss_growth_percent", "machine", ...}``.
Latency is from sending the question to receiving the complete answer.
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

import httpx
from PIL import Image, ImageDraw

from vqa.files import write_json
from vqa.machine import machine

LOOPBACK = {"127.0.0.1", "localhost", "::1"}
QUESTION = "what colour is the large circle?"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="run directory to serve (default: the demo's model)")
    parser.add_argument("--url", help="an app already running on this machine")
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients")
    parser.add_argument("--requests", type=int, default=20, help="questions per client")
    parser.add_argument("--question", default=QUESTION)
    parser.add_argument("--mode", help="fusion mode (default: the model's)")
    parser.add_argument("--k", type=int, help="regions kept (default: the model's)")
    parser.add_argument("--time-limit", type=float, default=300.0, help="seconds for the run")
    parser.add_argument(
        "--duration", type=float, help="ask back to back for this many seconds (not --requests)"
    )
    parser.add_argument("--startup-limit", type=float, default=180.0, help="seconds to start")
    parser.add_argument("--out", type=Path, help="also write the JSON result here")
    return parser.parse_args()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def running_app(model: Path, limit: float) -> Iterator[tuple[str, int]]:
    """``vqa serve`` for ``model`` on a free loopback port, stopped afterwards.

    Yields the app's URL and the server's process id.
    """
    url = f"http://127.0.0.1:{free_port()}/"
    command = [sys.executable, "-m", "vqa", "serve", "--model", str(model)]
    command += ["--port", url.rsplit(":", 1)[1].strip("/")]
    with tempfile.TemporaryFile("w+") as log:
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + limit
            while not responds(url):
                if server.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    raise SystemExit(f"the app did not start:\n{log.read()[-2000:]}")
                time.sleep(0.5)
            yield url, server.pid
        finally:
            server.terminate()
            server.wait(timeout=30)


def responds(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process so far (Linux), or None where unknown."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float | None:
    """Resident memory (VmRSS) of a process in MiB (Linux), or None where unknown."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    lines = [line for line in status.splitlines() if line.startswith("VmRSS:")]
    return int(lines[0].split()[1]) / 1024 if lines else None


def scene_png() -> bytes:
    """A 64-pixel scene like the embedded dataset's: shapes on grey."""
    image = Image.new("RGB", (64, 64), (200, 200, 200))
    draw = ImageDraw.Draw(image)
    draw.ellipse((8, 8, 30, 30), fill=(220, 30, 30))
    draw.rectangle((38, 36, 52, 50), fill=(30, 70, 230))
    draw.polygon([(12, 54), (20, 40), (28, 54)], fill=(240, 210, 0))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def endpoint_defaults(http: httpx.Client, url: str) -> dict[str, object]:
    """The default value of each input of the app's /answer endpoint, by parameter name."""
    info = http.get(f"{url}gradio_api/info").json()["named_endpoints"]["/answer"]
    return {p["parameter_name"]: p.get("parameter_default") for p in info["parameters"]}


def ask(http: httpx.Client, url: str, data: list, session: str) -> None:
    """One question through the queue; raises unless the answer is complete.

    Like a browser tab, each client keeps one ``session`` for all its questions.
    """
    body = {"data": data, "session_hash": session}
    response = http.post(f"{url}gradio_api/call/answer", json=body)
    response.raise_for_status()
    event = response.json()["event_id"]
    with http.stream("GET", f"{url}gradio_api/call/answer/{event}") as stream:
        lines = stream.iter_lines()
        for line in lines:
            if line.startswith("event: complete"):
                return
            if line.startswith("event: error"):
                raise RuntimeError(f"the app answered with an error: {next(lines, '')}")
    raise RuntimeError("the stream ended without an answer")


def bench(url: str, args: argparse.Namespace, server: int | None = None) -> dict:
    """Run the clients against ``url``; return the summary.

    With the ``server``'s process id, the summary also has the server's CPU time per answer
    (unlike latency, it hardly depends on what else the machine is doing) and its resident
    memory after the warm-up and at the end.
    """
    with httpx.Client(timeout=60) as http:
        upload = http.post(f"{url}gradio_api/upload", files={"files": ("scene.png", scene_png())})
        upload.raise_for_status()
        defaults = endpoint_defaults(http, url)
        mode = args.mode or defaults["mode"]
        k = args.k or defaults["k"]
        image = {"path": upload.json()[0], "meta": {"_type": "gradio.FileData"}}
        data = [image, args.question, mode, k]
        try:
            for _ in range(3):  # warm up: the first answers pay for lazy initialisation
                ask(http, url, data, "warm-up")
        except RuntimeError as error:
            raise SystemExit(f"the app did not answer the warm-up question: {error}") from error

    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    deadline = time.monotonic() + (args.duration or args.time_limit)

    def client(session: str) -> None:
        with httpx.Client(timeout=60) as http:
            for _ in itertools.count() if args.duration else range(args.requests):
                if time.monotonic() > deadline:
                    if args.duration:  # the end of the soak test, not an error
                        return
                    with lock:
                        errors.append("time limit")
                    continue
                start = time.perf_counter()
                try:
                    ask(http, url, data, session)
                except (httpx.HTTPError, RuntimeError, KeyError, ValueError) as error:
                    with lock:
                        errors.append(str(error)[:200])
                    continue
                with lock:
                    latencies.append(1000 * (time.perf_counter() - start))

    threads = [
        threading.Thread(target=client, args=(f"bench-{index}",)) for index in range(args.clients)
    ]
    cpu_before = cpu_seconds(server) if server else None
    rss_start = rss_mb(server) if server else None
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - start
    cpu_after = cpu_seconds(server) if server else None
    rss_end = rss_mb(server) if server else None

    percentiles = statistics.quantiles(latencies, n=100, method="inclusive") if latencies else []
    return {
        "clients": args.clients,
        "requests": len(latencies) + len(errors),
        "p50_ms": round(percentiles[49], 1) if percentiles else None,
        "p95_ms": round(percentiles[94], 1) if percentiles else None,
        "p99_ms": round(percentiles[98], 1) if percentiles else None,
        "throughput_rps": round(len(latencies) / seconds, 1),
        "errors": len(errors),
        "first_errors": sorted(set(errors))[:3],
        "mode": mode,
        "k": k,
        "seconds": round(seconds, 1),
        "server_cpu_ms_per_answer": (
            round(1000 * (cpu_after - cpu_before) / len(latencies), 1)
            if latencies and cpu_before is not None and cpu_after is not None
            else None
        ),
        "server_rss_mb_start": round(rss_start, 1) if rss_start else None,
        "server_rss_mb_end": round(rss_end, 1) if rss_end else None,
        "server_rss_growth_percent": (
            round(100 * (rss_end - rss_start) / rss_start, 1) if rss_start and rss_end else None
        ),
    }


def main() -> None:
    args = parse_args()
    measured_on = machine()
    if args.url:
        url = args.url.rstrip("/") + "/"
        if urlparse(url).hostname not in LOOPBACK:
            raise SystemExit(f"--url must be on this machine (127.0.0.1), got {args.url}")
        if not responds(url):
            raise SystemExit(f"no app answers at {url}")
        result = bench(url, args)
    else:
        from vqa.cache import default_model_dir

        model = Path(args.model) if args.model else default_model_dir()
        if not (model / "config.json").is_file():
            raise SystemExit(f"{model} is not a model directory: run `vqa demo` or pass --model")
        with running_app(model, args.startup_limit) as (url, server):
            result = bench(url, args, server)
        result["model"] = str(model)
    result["machine"] = measured_on
    if args.out:
        write_json(args.out, result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
