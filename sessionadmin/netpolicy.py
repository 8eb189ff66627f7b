"""Where MCP connections may go: the outbound URL policy (pure: no Django, no MCP SDK).

Loopback, link-local, private, unique-local, shared (CGNAT), cloud metadata, unspecified,
multicast and other non-global addresses are refused unless the operator listed the host in
``SESSIONADMIN_MCP_ALLOWED_HOSTS`` (host names, or IP addresses/networks). IPv6 forms that embed
an IPv4 address (mapped, compatible, 6to4, NAT64, Teredo) are judged by the embedded address.

The policy is applied twice: when a URL is saved or attached (``check_url``: a fast, clear form
error) and on every connection, on the addresses the host name resolved to at that moment
(``check_addresses``, called by the HTTP transport in ``mcp_client``, which then connects to
exactly the address it checked), so a name that later re-resolves to an internal address (DNS
rebinding) is refused too.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Names that reach a cloud provider's instance metadata service (credentials!) by name.
METADATA_HOSTS = frozenset(
    {
        "metadata",
        "metadata.google.internal",
        "metadata.goog",
        "metadata.azure.internal",
        "instance-data",
        "instance-data.ec2.internal",
        "metadata.tencentyun.com",
        "metadata.platformequinix.com",
    }
)
# Metadata services on addresses that are not otherwise special (or worth naming).
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a)
    for a in ("169.254.169.254", "169.254.170.2", "169.254.169.253", "fd00:ec2::254", "100.100.100.200", "192.0.0.192")
)

_V4_RANGES: tuple[tuple[str, str], ...] = (
    ("0.0.0.0/8", "an unspecified (this-network) address"),
    ("127.0.0.0/8", "a loopback address"),
    ("169.254.0.0/16", "a link-local address"),
    ("10.0.0.0/8", "a private address"),
    ("172.16.0.0/12", "a private address"),
    ("192.168.0.0/16", "a private address"),
    ("100.64.0.0/10", "a shared (CGNAT) address"),
    ("224.0.0.0/4", "a multicast address"),
    ("240.0.0.0/4", "a reserved address"),
)
_V6_RANGES: tuple[tuple[str, str], ...] = (
    ("::/128", "an unspecified address"),
    ("::1/128", "a loopback address"),
    ("fe80::/10", "a link-local address"),
    ("fec0::/10", "a site-local address"),
    ("fc00::/7", "a unique-local address"),
    ("ff00::/8", "a multicast address"),
    ("100::/64", "a discard-only address"),
)
_RANGES: tuple[tuple[IPNetwork, str], ...] = tuple(
    (ipaddress.ip_network(net), label) for net, label in (*_V4_RANGES, *_V6_RANGES)
)
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")
_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))

ALLOWED_SETTING = "SESSIONADMIN_MCP_ALLOWED_HOSTS"


class PolicyRefused(Exception):
    """A URL or address the outbound policy does not allow. ``str()`` says why, naming the
    host and the kind of address (it is meant for the operator who typed the URL)."""


@dataclass(frozen=True)
class Allowed:
    """The parsed ``SESSIONADMIN_MCP_ALLOWED_HOSTS``: host names (lowercase, no trailing dot)
    and IP networks (a single address is a /32 or /128)."""

    names: frozenset[str] = frozenset()
    networks: tuple[IPNetwork, ...] = field(default_factory=tuple)

    @classmethod
    def parse(cls, entries: Iterable[str]) -> Allowed:
        names: set[str] = set()
        networks: list[IPNetwork] = []
        for raw in entries:
            entry = raw.strip().strip("[]").lower()
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                names.add(entry.rstrip("."))
        return cls(frozenset(names), tuple(networks))

    def allows_name(self, host: str) -> bool:
        return normalize_host(host) in self.names

    def allows_address(self, address: IPAddress) -> bool:
        return any(address in net for net in self.networks if net.version == address.version)


def normalize_host(host: str) -> str:
    return host.strip().strip("[]").lower().rstrip(".")


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]  # the client's address; the server part is public
    if address in _IPV4_COMPATIBLE and int(address) > 1:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if any(address in net for net in _NAT64):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def why_refused(address: IPAddress) -> str | None:
    """What kind of non-public address this is ("a loopback address", ...), or None when it
    is an ordinary global address."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            reason = why_refused(embedded)
            return f"{reason} (in IPv6 form)" if reason else None
    if address in METADATA_ADDRESSES:
        return "a cloud metadata address"
    for net, label in _RANGES:
        if net.version == address.version and address in net:
            return label
    if not address.is_global:
        return "a reserved or special-purpose address"
    return None


def check_addresses(host: str, addresses: Sequence[IPAddress], allowed: Allowed) -> None:
    """Refuse unless every address ``host`` resolved to is public or allowed. A listed host
    name allows whatever it resolves to; a listed network allows the addresses inside it."""
    if allowed.allows_name(host):
        return
    name = normalize_host(host)
    if name in METADATA_HOSTS:
        raise PolicyRefused(f"{name} is a cloud metadata host; {_hint()}")
    if not addresses:
        raise PolicyRefused(f"{name} has no address")
    for address in addresses:
        reason = why_refused(address)
        if reason and not allowed.allows_address(address):
            what = str(address) if literal_address(name) == address else f"{name} resolves to {address}, which"
            raise PolicyRefused(f"{what} is {reason}; {_hint()}")


def _hint() -> str:
    return f"MCP servers on internal addresses must be listed in {ALLOWED_SETTING}"


def literal_address(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(normalize_host(host).split("%", 1)[0])
    except ValueError:
        return None


Resolver = Callable[[str], Sequence[IPAddress]]


def resolve(host: str) -> list[IPAddress]:
    """Every address ``host`` resolves to (blocking; the transport resolves with anyio)."""
    literal = literal_address(host)
    if literal is not None:
        return [literal]
    infos = socket.getaddrinfo(normalize_host(host), None, type=socket.SOCK_STREAM)
    return unique_addresses(info[4][0] for info in infos)


def unique_addresses(raw: Iterable[str | int]) -> list[IPAddress]:
    out: list[IPAddress] = []
    for item in raw:
        address = ipaddress.ip_address(str(item).split("%", 1)[0])
        if address not in out:
            out.append(address)
    return out


def check_url(url: str, allowed: Allowed, *, resolver: Resolver = resolve) -> None:
    """The save/attach-time check of a URL: its host, literal or resolved now. A name that
    does not resolve (yet) passes: the check at connect time still applies to it."""
    host = urlsplit(url).hostname or ""
    if not host:
        raise PolicyRefused("the URL has no host")
    if allowed.allows_name(host):
        return
    literal = literal_address(host)
    if literal is not None:
        check_addresses(host, [literal], allowed)
        return
    if normalize_host(host) in METADATA_HOSTS:
        check_addresses(host, [], allowed)
    try:
        addresses = list(resolver(host))
    except (OSError, UnicodeError):
        return
    if addresses:
        check_addresses(host, addresses, allowed)
