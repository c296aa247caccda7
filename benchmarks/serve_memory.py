"""What a multi-model server holds as it loads and unloads models: its resident memory (VmRSS) with nothing
loaded, after one request to each model, and once that model was unloaded for being idle.

    python benchmarks/serve_memory.py [--models gemma3-270m smollm2-135m] [--rounds 2] [--ctx 1024]

Starts `deeproots serve --keep-alive 2` on a free port (every stored model servable), then per round asks each model
for 20 tokens and waits for /api/ps to be empty and the unload to finish. Linux only (reads /proc).
"""

import argparse
import socket
import subprocess
import sys
import time

import httpx

UNLOAD_SETTLE_SECONDS = 3.0  # after /api/ps is empty: the engine stops and the model's memory is collected


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def resident_mb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) // 1024 for line in status if line.startswith("VmRSS"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["gemma3-270m", "smollm2-135m"])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--ctx", type=int, default=1024)
    args = parser.parse_args()
    url = f"http://127.0.0.1:{free_port()}"
    server = subprocess.Popen([sys.executable, "-m", "deeproots.server", "serve", "--port", url.rsplit(":", 1)[1],
                               "--ctx", str(args.ctx), "--keep-alive", "2"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def settled() -> int:
        while httpx.get(url + "/api/ps").json()["models"]:
            time.sleep(0.2)
        time.sleep(UNLOAD_SETTLE_SECONDS)
        return resident_mb(server.pid)

    try:
        while True:
            try:
                httpx.get(url + "/health")
                break
            except httpx.HTTPError:
                time.sleep(0.3)
        print(f"nothing loaded: {settled()} MB")
        for round_ in range(args.rounds):
            for model in args.models:
                httpx.post(url + "/v1/chat/completions", timeout=600, json={
                    "model": model, "max_tokens": 20, "messages": [{"role": "user", "content": "hi"}]})
                loaded = resident_mb(server.pid)
                print(f"round {round_} {model}: after one request {loaded} MB, unloaded {settled()} MB")
    finally:
        server.kill()
        server.wait()


if __name__ == "__main__":
    main()
