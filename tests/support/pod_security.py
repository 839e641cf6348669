"""The "restricted" Pod Security Standard, as checks on a pod spec (a dict from YAML).

Written from the standard's list of controls (kubernetes.io/docs/concepts/security/
pod-security-standards): the baseline ones (no host namespaces, ports or paths, no privileged
containers, no added capabilities beyond the baseline set, default /proc mount, safe sysctls,
no Unconfined seccomp or AppArmor, no custom SELinux user or role) and the restricted ones
(volume types, no privilege escalation, non-root, a RuntimeDefault or Localhost seccomp profile,
capabilities dropped to ALL with NET_BIND_SERVICE the only one added back). This project adds
a read-only root filesystem. Each violation is a sentence naming the container or field.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

WORKLOAD_KINDS = ("Pod", "Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob")

RESTRICTED_VOLUME_TYPES = frozenset(
    {
        "configMap",
        "csi",
        "downwardAPI",
        "emptyDir",
        "ephemeral",
        "persistentVolumeClaim",
        "projected",
        "secret",
    }
)
SAFE_SYSCTLS = frozenset(
    {
        "kernel.shm_rmid_forced",
        "net.ipv4.ip_local_port_range",
        "net.ipv4.ip_unprivileged_port_start",
        "net.ipv4.tcp_syncookies",
        "net.ipv4.ping_group_range",
        "net.ipv4.ip_local_reserved_ports",
        "net.ipv4.tcp_keepalive_time",
        "net.ipv4.tcp_fin_timeout",
        "net.ipv4.tcp_keepalive_intvl",
        "net.ipv4.tcp_keepalive_probes",
    }
)
SELINUX_TYPES = frozenset({"", "container_t", "container_init_t", "container_kvm_t"})
SECCOMP_ALLOWED = frozenset({"RuntimeDefault", "Localhost"})


def pod_specs(docs: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any], dict[str, str]]]:
    """(kind/name, pod spec, pod labels) of every workload among `docs`."""
    for doc in docs:
        kind = doc.get("kind")
        if kind not in WORKLOAD_KINDS:
            continue
        where = f"{kind}/{doc['metadata']['name']}"
        if kind == "Pod":
            yield where, doc["spec"], doc["metadata"].get("labels", {})
            continue
        template = doc["spec"]["template"]
        if kind == "CronJob":
            template = doc["spec"]["jobTemplate"]["spec"]["template"]
        yield where, template["spec"], template.get("metadata", {}).get("labels", {})


def _containers(pod: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every container of the pod: init, regular and ephemeral."""
    for field in ("initContainers", "containers", "ephemeralContainers"):
        yield from pod.get(field) or []


def _pod_and_container(pod: dict[str, Any], container: dict[str, Any], field: str) -> Any:
    """A security setting as it applies to `container`: its own, else the pod's."""
    own = (container.get("securityContext") or {}).get(field)
    return own if own is not None else (pod.get("securityContext") or {}).get(field)


def _pod_level(pod: dict[str, Any]) -> list[str]:
    """Violations of the controls that are pod-wide only."""
    found = []
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(field):
            found.append(f"{field} is set")
    for volume in pod.get("volumes") or []:
        types = set(volume) - {"name"}
        if not types <= RESTRICTED_VOLUME_TYPES:
            found.append(f"volume {volume['name']} is of a type restricted forbids: {types}")
    context = pod.get("securityContext") or {}
    for sysctl in context.get("sysctls") or []:
        if sysctl["name"] not in SAFE_SYSCTLS:
            found.append(f"sysctl {sysctl['name']} is not a safe one")
    return found


def _container_level(pod: dict[str, Any], container: dict[str, Any]) -> list[str]:
    """Violations by one container (its settings, or the pod's where it has none)."""
    name = container["name"]
    context = container.get("securityContext") or {}
    found = []
    if context.get("privileged"):
        found.append(f"{name}: privileged")
    if context.get("allowPrivilegeEscalation") is not False:
        found.append(f"{name}: allowPrivilegeEscalation is not false")
    if context.get("readOnlyRootFilesystem") is not True:
        found.append(f"{name}: readOnlyRootFilesystem is not true")
    if context.get("procMount", "Default") != "Default":
        found.append(f"{name}: procMount is not Default")
    capabilities = context.get("capabilities") or {}
    if "ALL" not in (capabilities.get("drop") or []):
        found.append(f"{name}: capabilities do not drop ALL")
    if set(capabilities.get("add") or []) - {"NET_BIND_SERVICE"}:
        found.append(f"{name}: capabilities add more than NET_BIND_SERVICE")
    for port in container.get("ports") or []:
        if port.get("hostPort"):
            found.append(f"{name}: hostPort {port['hostPort']}")
    if _pod_and_container(pod, container, "runAsNonRoot") is not True:
        found.append(f"{name}: runAsNonRoot is not true")
    if _pod_and_container(pod, container, "runAsUser") == 0:
        found.append(f"{name}: runAsUser is 0")
    seccomp = (_pod_and_container(pod, container, "seccompProfile") or {}).get("type")
    if seccomp not in SECCOMP_ALLOWED:
        found.append(f"{name}: seccompProfile is {seccomp!r}, not RuntimeDefault or Localhost")
    apparmor = (_pod_and_container(pod, container, "appArmorProfile") or {}).get("type")
    if apparmor == "Unconfined":
        found.append(f"{name}: appArmorProfile is Unconfined")
    selinux = _pod_and_container(pod, container, "seLinuxOptions") or {}
    if selinux.get("type", "") not in SELINUX_TYPES or selinux.get("user") or selinux.get("role"):
        found.append(f"{name}: seLinuxOptions set beyond the allowed types")
    return found


def restricted_violations(pod: dict[str, Any]) -> list[str]:
    """Every way `pod` breaks the restricted profile (plus a read-only root); empty if none."""
    found = _pod_level(pod)
    for container in _containers(pod):
        found += _container_level(pod, container)
    return found
