"""The operator's callback allow-list: host names and address ranges a job's callback may reach
beyond public addresses. Its own module, so settings can check it without importing the jobs."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
HOST_NAME = re.compile(r"[a-z0-9_-]+(\.[a-z0-9_-]+)*")


def canonical(address: IPAddress) -> IPAddress:
    """An IPv4-mapped IPv6 address as the IPv4 address it is; any other address unchanged."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def host_name(host: str) -> str:
    """A host name as the allow-list compares it: lower case, ASCII, without the trailing dot."""
    return host.lower().removesuffix(".")


@dataclass(frozen=True)
class AllowList:
    """The operator's callback targets beyond public addresses: host names and address ranges."""

    hosts: frozenset[str] = frozenset()
    networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def parse(cls, entries: Iterable[str]) -> AllowList:
        """Host names, addresses and CIDRs ("hooks.internal", "::1", "10.0.0.0/8"); ValueError
        names an entry that is none of these."""
        hosts: set[str] = set()
        networks: list[IPNetwork] = []
        for entry in entries:
            text = entry.strip()
            try:
                networks.append(ipaddress.ip_network(text, strict=False))
                continue
            except ValueError:
                pass
            try:
                name = host_name(text.encode("idna").decode("ascii"))
            except UnicodeError:
                name = ""
            if not HOST_NAME.fullmatch(name):
                raise ValueError(f"callback_allow entry {entry!r} is no host name, address or CIDR")
            hosts.add(name)
        return cls(frozenset(hosts), tuple(networks))

    def allows_host(self, host: str) -> bool:
        """True when the operator named this host."""
        return host_name(host) in self.hosts

    def allows_address(self, address: IPAddress) -> bool:
        """True when an allowed range holds this address."""
        address = canonical(address)
        return any(address.version == n.version and address in n for n in self.networks)
