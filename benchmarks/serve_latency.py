"""Latency of a 5-way 1-shot prediction through the `metalab serve` API, on loopback.

    python benchmarks/serve_latency.py                          # a ProtoNet trained here for 5 episodes
    python benchmarks/serve_latency.py --checkpoint runs/protonet/checkpoint.pt --requests 200

Starts `metalab serve CHECKPOINT` in a subprocess on a free loopback port and asks it with one
keep-alive httpx client, one request at a time, after 10 warm-up requests:

- predict: `POST /episodes/{id}/predict` with one query image against a 5-way 1-shot episode made once;
- episode + predict: `POST /episodes` with the five support images, then the prediction, then
  `DELETE /episodes/{id}` (not timed), as a page does when its classes changed.

The images are 105 x 105 black-on-white PNGs (the size of Omniglot's drawings), sent as base64 JSON.
Without --checkpoint a ProtoNet is meta-trained for 5 episodes on a synthetic 28 x 28 folder: its
weights do not change the work per request (the Conv-4 forward pass on 6 images). The p50 and p95
in milliseconds go to benchmarks/results/serve_latency.json; docs/serve.md quotes them.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "serve_latency.json"


def drawing(seed: int) -> bytes:
    """A 105 x 105 PNG of random black strokes on white, like an Omniglot drawing."""
    rng = np.random.default_rng(seed)
    image = Image.new("L", (105, 105), 255)
    pen = ImageDraw.Draw(image)
    for _ in range(3):
        pen.line([tuple(p) for p in rng.integers(15, 90, (4, 2)).tolist()], fill=0, width=3)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def train_checkpoint(folder: Path) -> Path:
    """A ProtoNet meta-trained for 5 episodes on 20 classes of synthetic drawings."""
    from metalab.config import Config
    from metalab.train import train

    for c in range(20):
        (folder / "data" / f"c{c}").mkdir(parents=True)
        for i in range(3):
            (folder / "data" / f"c{c}" / f"{i}.png").write_bytes(drawing(100 * c + i))
    config = Config(
        benchmark="folder",
        data_dir=str(folder / "data"),
        algorithm="protonet",
        ways=5,
        shots=1,
        queries=1,
        val_classes=5,
        test_classes=5,
        iterations=5,
        val_every=0,
        test_tasks=2,
    )
    train(config, folder / "run", progress=False, log=lambda _: None)
    return folder / "run" / "checkpoint.pt"


def percentiles(seconds: list[float]) -> dict:
    ms = np.array(seconds) * 1000
    return {
        "p50_ms": round(float(np.percentile(ms, 50)), 2),
        "p95_ms": round(float(np.percentile(ms, 95)), 2),
        "mean_ms": round(float(ms.mean()), 2),
        "requests": len(seconds),
    }


def main() -> None:
    import httpx

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="an image checkpoint (default: train a ProtoNet for 5 episodes)")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = Path(args.checkpoint) if args.checkpoint else train_checkpoint(Path(tmp))
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
        command = [sys.executable, "-m", "metalab.cli", "serve", str(checkpoint), "--port", str(port)]
        server = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL)
        base = f"http://127.0.0.1:{port}"
        try:
            with httpx.Client(base_url=base, timeout=30) as client:
                deadline = time.monotonic() + 120
                while True:
                    try:
                        model = client.get("/model").json()
                        break
                    except httpx.TransportError:
                        if time.monotonic() > deadline or server.poll() is not None:
                            raise SystemExit("the server did not start") from None
                        time.sleep(0.2)
                encode = lambda data: base64.b64encode(data).decode()  # noqa: E731
                support = {
                    "classes": [{"name": f"class{k}", "images": [encode(drawing(k))]} for k in range(5)]
                }
                query = {"images": [encode(drawing(2))]}
                episode = client.post("/episodes", json=support).json()["id"]

                def predict_only():
                    start = time.perf_counter()
                    response = client.post(f"/episodes/{episode}/predict", json=query)
                    elapsed = time.perf_counter() - start
                    assert response.status_code == 200, response.text
                    return elapsed

                def episode_and_predict():
                    start = time.perf_counter()
                    made = client.post("/episodes", json=support).json()["id"]
                    response = client.post(f"/episodes/{made}/predict", json=query)
                    elapsed = time.perf_counter() - start
                    assert response.status_code == 200, response.text
                    client.delete(f"/episodes/{made}")
                    return elapsed

                results = {}
                for name, call in (("predict", predict_only), ("episode_and_predict", episode_and_predict)):
                    for _ in range(10):
                        call()
                    results[name] = percentiles([call() for _ in range(args.requests)])
                    print(f"{name}: {results[name]}")
        finally:
            server.terminate()
            server.wait(30)
    record = {
        "what": "5-way 1-shot, one 105x105 PNG query, base64 JSON, one keep-alive client on loopback",
        "checkpoint": str(args.checkpoint)
        if args.checkpoint
        else "protonet, 5 episodes on synthetic drawings",
        "algorithm": model["algorithm"],
        "results": results,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "torch": __import__("torch").__version__,
    }
    Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
