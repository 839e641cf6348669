"""What NetworkPolicies allow between pods of one namespace, evaluated as the API defines it.

A pod that no policy of a direction (Ingress or Egress) selects is open in that direction; once
one does, only what some rule of a selecting policy allows gets through, and a connection needs
both the sender's egress and the receiver's ingress. Only what the shipped policies use is
understood (matchLabels selectors, numeric TCP/UDP ports, namespace and ipBlock peers, which
never match a pod of this namespace); anything else fails loudly rather than being misread.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Whether a label selector matches `labels` (an empty selector matches every pod)."""
    assert set(selector) <= {"matchLabels"}, f"selector not understood here: {selector}"
    wanted = selector.get("matchLabels") or {}
    return all(labels.get(key) == value for key, value in wanted.items())


def _peer_matches(peer: dict[str, Any], labels: dict[str, str]) -> bool:
    """Whether a rule's peer is a pod of this namespace with `labels`."""
    if "ipBlock" in peer or "namespaceSelector" in peer:
        return False  # other namespaces and addresses outside the cluster's pods
    return selects(peer["podSelector"], labels)


def _port_matches(ports: list[dict[str, Any]] | None, port: int, protocol: str) -> bool:
    """Whether a rule's ports (none: every port) admit `port`."""
    if not ports:
        return True
    for entry in ports:
        assert isinstance(entry.get("port"), int), f"only numeric ports here: {entry}"
        if entry.get("protocol", "TCP") == protocol and entry["port"] == port:
            return True
    return False


@dataclass
class Policies:
    """The NetworkPolicies of one namespace."""

    docs: list[dict[str, Any]]

    def _selecting(self, labels: dict[str, str], direction: str) -> list[dict[str, Any]]:
        """The policies of `direction` that select a pod with `labels`."""
        return [
            doc
            for doc in self.docs
            if direction in doc["spec"].get("policyTypes", ["Ingress"])
            and selects(doc["spec"]["podSelector"], labels)
        ]

    def _allows(
        self, direction: str, own: dict[str, str], peer: dict[str, str], port: int, proto: str
    ) -> bool:
        """Whether the pod `own` may take (Ingress) or open (Egress) this connection."""
        selecting = self._selecting(own, direction)
        if not selecting:
            return True
        key, peers = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
        for doc in selecting:
            for rule in doc["spec"].get(key) or []:
                peer_ok = not rule.get(peers) or any(_peer_matches(p, peer) for p in rule[peers])
                if peer_ok and _port_matches(rule.get("ports"), port, proto):
                    return True
        return False

    def allowed(
        self, source: dict[str, str], target: dict[str, str], port: int, proto: str = "TCP"
    ) -> bool:
        """Whether a pod labelled `source` may connect to one labelled `target` on `port`."""
        return self._allows("Egress", source, target, port, proto) and self._allows(
            "Ingress", target, source, port, proto
        )
