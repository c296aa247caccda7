"""Latency of the tensor-parallel collectives between two "hosts" (network namespaces joined by a veth pair, with
`tc netem` modelling a link), as the ranks run them (parallel/group.py), for the projection in docs/benchmarks.md.

    python benchmarks/bench_tp_collectives.py [--width 4096] [--repeats 400]     (root: it makes the namespaces)

For each link setting, one process in each namespace forms the group (join handshake included) and times, median
over --repeats: an all-reduce of `width` float32 (the "sum" reduction's per-projection op), an all-gather of
width / 2 per rank (the "exact" reduction's op) and a step broadcast (16 int64).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks"), str(ROOT / "tests" / "parallel")]

# name -> the tc queueing disciplines to try, in order: netem models delay and rate; where the kernel has no netem,
# tbf models the rate alone (the row says so, and the link's delay is then added in the projection).
LINKS = {"veth, no shaping": [None],
         "10 GbE": ["netem delay 0.025ms rate 10gbit", "tbf rate 10gbit burst 256kb latency 10ms"],
         "1 GbE": ["netem delay 0.1ms rate 1gbit", "tbf rate 1gbit burst 64kb latency 10ms"]}


def rank_main(rank: int, width: int, repeats: int) -> None:
    import numpy as np

    from deeproots.parallel.group import ProcessGroup, Rendezvous
    from timing import median_us

    group = ProcessGroup(Rendezvous.from_environment(), b"benchmark-secret-0123456789")
    x = np.ones(width, np.float32)
    half = np.ones((1, width // 2), np.float32)
    plan = np.arange(16, dtype=np.int64)

    results = {"all_reduce_us": median_us(lambda: group.all_reduce_(x.copy()), repeats),
               "all_gather_us": median_us(lambda: group.gather_columns(half, [width // 2] * 2, everywhere=True),
                                          repeats),
               "broadcast_us": median_us(lambda: group.broadcast(plan if rank == 0 else None, np.int64), repeats)}
    if rank == 0:
        print(json.dumps(results), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--width", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=400)
    parser.add_argument("--rank", type=int, default=None)
    args = parser.parse_args()
    if args.rank is not None:
        return rank_main(args.rank, args.width, args.repeats)
    from netns import ADDRESSES, TwoHosts

    print(f"load average {os.getloadavg()}", flush=True)
    env = {**os.environ, "WORLD_SIZE": "2", "MASTER_ADDR": ADDRESSES[0], "MASTER_PORT": "29700"}
    with TwoHosts("bn") as hosts:
        for name, qdiscs in LINKS.items():
            qdisc = next((q for q in qdiscs if hosts.shape(q)), "none applied")
            name = f"{name} ({qdisc})" if qdisc else name
            argv = [sys.executable, __file__, "--width", str(args.width), "--repeats", str(args.repeats), "--rank"]
            follower = subprocess.Popen(hosts.command(1, argv + ["1"]), env={**env, "RANK": "1"})
            leader = subprocess.run(hosts.command(0, argv + ["0"]), env={**env, "RANK": "0"}, capture_output=True,
                                    text=True, check=True)
            follower.wait()
            print(f"| {name} | {' | '.join(f'{v:.0f}' for v in json.loads(leader.stdout).values())} |", flush=True)
    print(f"load average {os.getloadavg()}")


if __name__ == "__main__":
    main()
