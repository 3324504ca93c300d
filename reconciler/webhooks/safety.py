"""Where a delivery may go: http(s) only, and never to an address the caller should not reach.

A webhook URL is written by a caller, and the reconciler posts to it from inside our network: an
SSRF vector. So, at each attempt (DNS answers change, and a name that resolved to a public
address at admission may resolve to ``127.0.0.1`` later):

* the host is resolved here, and **every** address it resolves to must be global unicast: loopback,
  private (RFC 1918, ULA), link-local (which holds the cloud metadata address 169.254.169.254),
  carrier-grade NAT, multicast, reserved and unspecified addresses are refused, and so is an IPv6
  address that reaches such an IPv4 one (mapped, 6to4, Teredo, NAT64, IPv4-compatible), unless
  ``WEBHOOK_ALLOW_PRIVATE=1``;
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


NAT64_PREFIXES = (ipaddress.IPv6Network("64:ff9b::/96"), ipaddress.IPv6Network("64:ff9b:1::/48"))
"""Translated to the IPv4 address in their last 32 bits (RFC 6052, RFC 8215) by a NAT64 gateway."""
IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")
"""The deprecated IPv4-compatible form ``::a.b.c.d``."""


def embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address reaches through a translation or a tunnel, if any."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]  # the client's address (the server's is the relay's, public)
    if any(address in prefix for prefix in NAT64_PREFIXES) or (
        address in IPV4_COMPATIBLE and int(address) > 1  # not :: or ::1, which are themselves
    ):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def forbidden(address: IPAddress) -> bool:
    """True for every address that is not plain global unicast, or that reaches one that is not
    (an IPv6 address embedding a private IPv4 one: mapped, 6to4, Teredo, NAT64, IPv4-compatible)."""
    if isinstance(address, ipaddress.IPv6Address):
        inner = embedded_ipv4(address)
        if inner is not None:
            return forbidden(inner)
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
