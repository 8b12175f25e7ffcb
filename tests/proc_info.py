"""What a server process holds, read from /proc (Linux): its process tree, the TCP sockets the tree listens on, its
resident memory. Used by tests/test_server.py and benchmarks/bench_serving.py."""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path

PROC = Path("/proc")


def process_tree(pid: int) -> set[int]:
    """``pid`` and every process below it."""
    parents: dict[int, int] = {}
    for p in PROC.iterdir():
        if p.name.isdigit():
            try:
                parents[int(p.name)] = int((p / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    tree, grew = {pid}, True
    while grew:
        new = {c for c, parent in parents.items() if parent in tree} - tree
        tree |= new
        grew = bool(new)
    return tree


def _socket_inodes(pids: set[int]) -> set[str]:
    inodes = set()
    for p in pids:
        try:
            for fd in (PROC / str(p) / "fd").iterdir():
                m = re.fullmatch(r"socket:\[(\d+)\]", os.readlink(fd))
                if m:
                    inodes.add(m.group(1))
        except OSError:
            continue
    return inodes


def _address(hex_addr: str, v6: bool) -> str:
    raw = bytes.fromhex(hex_addr)
    if not v6:
        return socket.inet_ntop(socket.AF_INET, raw[::-1])
    return socket.inet_ntop(socket.AF_INET6, b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4)))


def listening(pid: int | None = None, port: int | None = None) -> set[tuple[str, int]]:
    """(address, port) of LISTEN TCP sockets: those the process tree of ``pid`` holds, or (``pid`` None) any
    process's on ``port``."""
    inodes = _socket_inodes(process_tree(pid)) if pid is not None else None
    out = set()
    for table, v6 in (("tcp", False), ("tcp6", True)):
        for line in (PROC / "net" / table).read_text().splitlines()[1:]:
            f = line.split()
            addr, hex_port = f[1].split(":")
            if f[3] != "0A" or (inodes is not None and f[9] not in inodes):  # 0A: LISTEN
                continue
            if port is None or int(hex_port, 16) == port:
                out.add((_address(addr, v6), int(hex_port, 16)))
    return out


def tree_rss_mb(pid: int) -> float:
    """Resident memory summed over the process tree of ``pid``, MB (shared pages counted in each process)."""
    total = 0
    for p in process_tree(pid):
        try:
            m = re.search(r"^VmRSS:\s+(\d+) kB", (PROC / str(p) / "status").read_text(), re.M)
        except OSError:
            continue
        total += int(m.group(1)) if m else 0
    return total / 1024.0
