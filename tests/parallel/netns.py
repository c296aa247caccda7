"""Two network namespaces joined by a veth pair: two "hosts" on one machine, for the tests and the benchmark.

The addresses (10.231.0.1 and 10.231.0.2) exist only inside the namespaces made here, which are removed again on
exit; `tc netem` on the pair can model a slower link. Needs root (CI runs as root) and iproute2.
"""

from __future__ import annotations

import os
import shutil
import subprocess

ADDRESSES = ("10.231.0.1", "10.231.0.2")


def available() -> str | None:
    """None when namespaces can be made here, else why not."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "iproute2's `ip` is not installed"
    return None


class TwoHosts:
    def __init__(self, tag: str):
        self.names = (f"dr{tag}a", f"dr{tag}b")
        self.links = (f"dr{tag}x", f"dr{tag}y")

    def __enter__(self) -> "TwoHosts":
        (a, b), (x, y) = self.names, self.links
        try:
            for name in self.names:
                run("ip", "netns", "add", name)
            run("ip", "link", "add", x, "type", "veth", "peer", "name", y)
            for name, link, address in ((a, x, ADDRESSES[0]), (b, y, ADDRESSES[1])):
                run("ip", "link", "set", link, "netns", name)
                run("ip", "-n", name, "addr", "add", f"{address}/24", "dev", link)
                run("ip", "-n", name, "link", "set", link, "up")
                run("ip", "-n", name, "link", "set", "lo", "up")
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        for name in self.names:  # the veth pair goes with its namespaces
            subprocess.run(["ip", "netns", "delete", name], capture_output=True)

    def command(self, host: int, argv: list[str]) -> list[str]:
        """argv run inside host 0 or 1."""
        return ["ip", "netns", "exec", self.names[host], *argv]

    def shape(self, qdisc: str | None) -> bool:
        """Put a `tc` queueing discipline (e.g. "netem delay 0.1ms rate 1gbit") on both ends of the link, or clear
        them (None); False when this kernel lacks it (sch_netem is a module some kernels do not ship)."""
        for name, link in zip(self.names, self.links):
            subprocess.run(["ip", "netns", "exec", name, "tc", "qdisc", "del", "dev", link, "root"],
                           capture_output=True)
            if qdisc and subprocess.run(["ip", "netns", "exec", name, "tc", "qdisc", "add", "dev", link, "root",
                                         *qdisc.split()], capture_output=True).returncode != 0:
                return False
        return True


def run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True)
