"""Where a delivery may go: http(s) only, and never to an address the caller should not reach.

A webhook URL is written by a caller, and the reconciler posts to it from inside our network: an
SSRF vector. So, at each attempt (DNS answers change, and a name that resolved to a public
address at admission may resolve to ``127.0.0.1`` later):

* the host is resolved here, and **every** address it resolves to must be global unicast: loopback,
  private (RFC 1918, ULA), link-local (which holds the cloud metadata address 169.254.169.254),
  carrier-grade NAT, multicast, reserved and unspecified addresses are refused, IPv4-mapped IPv6
  included, unless ``WEBHOOK_ALLOW_PRIVATE=1``;
* the request is then sent to the checked address itself (:class:`Target`), with the original
  ``Host`` header and TLS server name, so a second lookup inside the HTTP client cannot be
  answered differently (DNS rebinding);
* redirects are never followed (the sender's client is built with ``follow_redirects=False``), so
  a public receiver cannot bounce the request inward.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class RefusedDestination(Exception):
    """The URL or an address it resolves to may not be delivered to (permanent: not retried)."""


class UnresolvedHost(Exception):
    """The host did not resolve now (transient: retried on the schedule)."""


@dataclass(frozen=True)
class Target:
    """Where to connect: the URL with the checked address in place of the host name."""

    url: str
    host_header: str
    server_name: str | None
    """The TLS server name (SNI and certificate check) for https; None for http."""


def forbidden(address: IPAddress) -> bool:
    """True for every address that is not plain global unicast."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return not address.is_global or address.is_multicast


async def resolve_target(url: str, *, allow_private: bool) -> Target:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise RefusedDestination("only http:// and https:// URLs with a host are delivered to")
    host = parts.hostname
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise UnresolvedHost(f"cannot resolve the host: {exc}") from None
    addresses = [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]
    if not addresses:
        raise UnresolvedHost("the host resolved to no address")
    if not allow_private:
        refused = [a for a in addresses if forbidden(a)]
        if refused:
            raise RefusedDestination(
                f"the host resolves to {refused[0]}, a loopback, private, link-local or reserved address"
            )
    address = addresses[0]
    literal = f"[{address}]" if address.version == 6 else str(address)
    netloc = f"{literal}:{parts.port}" if parts.port else literal
    host_header = parts.netloc.rsplit("@", 1)[-1]
    return Target(
        url=urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, "")),
        host_header=host_header,
        server_name=host if parts.scheme == "https" else None,
    )
