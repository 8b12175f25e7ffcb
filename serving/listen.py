"""The listening socket of a server: exactly ``host:port``, or one line saying why not (both engines)."""

from __future__ import annotations

import errno
import ipaddress
import socket

from clip_debias.runtime.errors import ClipDebiasError


def bind(host: str, port: int, backlog: int = 2048) -> socket.socket:
    """A socket listening on ``host:port`` only (IPv6: no IPv4-mapped twin); ``ClipDebiasError`` naming the address
    when it cannot be bound (e.g. ``cannot listen on 127.0.0.1:8000: the port is in use``)."""
    family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # connections in TIME_WAIT do not block a restart
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, port))
        sock.listen(backlog)
    except OSError as e:
        sock.close()
        why = "the port is in use" if e.errno == errno.EADDRINUSE else e.strerror or str(e)
        raise ClipDebiasError(f"cannot listen on {host}:{port}: {why}") from None
    return sock


def check_free(host: str, port: int) -> None:
    """``bind`` and release at once: a port another process holds is one line before a slow start (Ray's)."""
    bind(host, port, backlog=1).close()
