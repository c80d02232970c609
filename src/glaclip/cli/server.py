"""``glaclip demo``'s server, as the command line sees it: the port checked before the models
load, and the address said once the page listens."""

from __future__ import annotations

import errno
import socket
import sys


def check_port(host: str, port: int) -> None:
    """Raise ValueError unless this process can listen on ``host:port`` now (as Gradio binds:
    with ``SO_REUSEADDR``), so that a busy port is reported before the models load."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as err:
        raise ValueError(f"--host {host} is no address of this machine: {err.strerror}") from None
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                raise ValueError(
                    f"--port {port} is in use on {host} (another server, or a demo already "
                    "running): choose another --port"
                ) from None
            raise ValueError(f"cannot listen on {host}:{port}: {err.strerror}") from None


def announce(local_url: str, share_url: str | None) -> None:
    """The demo's address, once it listens (instead of Gradio's own lines)."""
    where = local_url + (f" and {share_url} (public link)" if share_url else "")
    print(f"glaclip: the demo is at {where}; Ctrl+C stops it", file=sys.stderr)
