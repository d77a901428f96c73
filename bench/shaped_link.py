"""A lab far away, on this machine: a network namespace reached over a link with a set
bandwidth and round-trip time.

    with ShapedLink(LinkSpec(rate_mbit=100, rtt_ms=40)) as link:
        subprocess.run(link.inside(["python", "-m", "deploy.cli", "supernode", ...]))

The namespace (``ip netns``) has one interface, a TUN device, whose peer is a TUN device in this
namespace: ``link.host`` (here) and ``link.peer`` (in there) are a point-to-point pair. Every
IP packet between them passes through a forwarder process that holds both devices and releases
each packet ``rtt/2`` after it read it (a delay line), and each device's egress queue is a
token bucket (``tc qdisc ... tbf``) at ``rate``, so TCP meets the bandwidth, the queue and the
round-trip time a real path has: slow start, congestion window, per-request round trips.

Why not ``tc netem``: it does exactly this in the kernel, but this machine's kernel is built
without it (``CONFIG_NET_SCH_NETEM`` is not set; ``tc qdisc add ... netem`` answers "Specified
qdisc kind is unknown"); TUN and TBF are available. Needs root (namespaces, TUN, tc).
"""

from __future__ import annotations

import argparse
import collections
import fcntl
import os
import select
import signal
import struct
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000


@dataclass(frozen=True)
class LinkSpec:
    """The path between the coordinator's entry and the lab."""

    rate_mbit: float = 100.0
    rtt_ms: float = 40.0
    mtu: int = 1500
    queue_ms: float = 50.0  # how much the bottleneck queue holds, at ``rate`` (a router's buffer)

    @property
    def bytes_per_second(self) -> float:
        return self.rate_mbit * 1e6 / 8

    def floor_seconds(self, down_bytes: int, up_bytes: int, round_trips: int = 2) -> float:
        """The least a transfer of ``down_bytes`` to the lab and ``up_bytes`` back can take on
        this link: both at full rate, plus ``round_trips`` round trips (a request and its
        answer each way)."""
        return ((down_bytes + up_bytes) / self.bytes_per_second
                + round_trips * self.rtt_ms / 1000)


def _open_tun(name: str) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    return fd


def forward(fd_a: int, fd_b: int, delay: float) -> None:
    """Move packets both ways between two TUN devices, each ``delay`` seconds late."""
    queues = {fd_a: collections.deque(), fd_b: collections.deque()}  # packets read from fd
    other = {fd_a: fd_b, fd_b: fd_a}
    stop = False

    def on_term(signum, frame) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    while not stop:
        now = time.monotonic()
        due = [q[0][0] for q in queues.values() if q]
        timeout = max(0.0, min(due) - now) if due else 0.5
        try:
            readable, _, _ = select.select([fd_a, fd_b], [], [], timeout)
        except InterruptedError:
            continue
        now = time.monotonic()
        for fd in readable:
            while True:
                try:
                    packet = os.read(fd, 65536)
                except BlockingIOError:
                    break
                except OSError:
                    return  # the device is gone
                queues[fd].append((now + delay, packet))
        now = time.monotonic()
        for fd, queue in queues.items():
            while queue and queue[0][0] <= now:
                _, packet = queue.popleft()
                try:
                    os.write(other[fd], packet)
                except BlockingIOError:
                    pass  # the receiving stack is full: a dropped packet, as on a real link
                except OSError:
                    return


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


class ShapedLink:
    """The namespace, the two devices, the forwarder and the queues; removed on exit."""

    def __init__(self, spec: LinkSpec, name: str = "zk0wire", subnet: str = "10.77.0") -> None:
        self.spec = spec
        self.name = name
        self.host = f"{subnet}.1"  # this end (the coordinator's side)
        self.peer = f"{subnet}.2"  # the lab's end, inside the namespace
        self._dev_host, self._dev_peer = f"{name}h", f"{name}p"
        self._forwarder: subprocess.Popen | None = None

    def inside(self, cmd: list[str]) -> list[str]:
        """``cmd`` as run inside the lab's namespace."""
        return ["ip", "netns", "exec", self.name, *cmd]

    def _tbf(self, *where: str, dev: str) -> list[str]:
        limit = max(int(self.spec.bytes_per_second * self.spec.queue_ms / 1000), 4 * self.spec.mtu)
        return [*where, "tc", "qdisc", "replace", "dev", dev, "root", "tbf",
                "rate", f"{self.spec.rate_mbit}mbit", "burst", f"{max(self.spec.mtu * 4, 16000)}",
                "limit", str(limit)]

    def __enter__(self) -> ShapedLink:
        if os.geteuid() != 0:
            raise PermissionError("a shaped link needs root (network namespaces, TUN, tc)")
        self.close()  # what a killed earlier run left behind
        _ip("netns", "add", self.name)
        try:
            _ip("-n", self.name, "link", "set", "lo", "up")
            fd_host, fd_peer = _open_tun(self._dev_host), _open_tun(self._dev_peer)
            _ip("link", "set", self._dev_peer, "netns", self.name)
            _ip("addr", "add", self.host, "peer", self.peer, "dev", self._dev_host)
            _ip("link", "set", self._dev_host, "mtu", str(self.spec.mtu), "up")
            _ip("-n", self.name, "addr", "add", self.peer, "peer", self.host, "dev",
                self._dev_peer)
            _ip("-n", self.name, "link", "set", self._dev_peer, "mtu", str(self.spec.mtu), "up")
            subprocess.run(self._tbf(dev=self._dev_host), check=True, capture_output=True)
            subprocess.run(self._tbf("ip", "netns", "exec", self.name, dev=self._dev_peer),
                           check=True, capture_output=True)
            self._forwarder = subprocess.Popen(
                [sys.executable, "-m", "bench.shaped_link", "--fds", str(fd_host), str(fd_peer),
                 "--delay-ms", str(self.spec.rtt_ms / 2)],
                pass_fds=(fd_host, fd_peer), cwd=Path(__file__).resolve().parent.parent)
            os.close(fd_host)
            os.close(fd_peer)
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        if self._forwarder is not None:
            self._forwarder.terminate()
            try:
                self._forwarder.wait(10)
            except subprocess.TimeoutExpired:
                self._forwarder.kill()
                self._forwarder.wait()
            self._forwarder = None
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)
        subprocess.run(["ip", "link", "del", self._dev_host], capture_output=True)

    def __exit__(self, *exc: object) -> None:
        self.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="the delay line of a ShapedLink (internal)")
    p.add_argument("--fds", type=int, nargs=2, required=True)
    p.add_argument("--delay-ms", type=float, required=True)
    a = p.parse_args(argv)
    forward(a.fds[0], a.fds[1], a.delay_ms / 1000)
    return 0


if __name__ == "__main__":
    sys.exit(main())
