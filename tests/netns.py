"""Two "hosts" on one machine: network namespaces joined by a veth pair.

Multi-node tests (Ray head + worker, two SLURM nodes) need distinct IP addresses that
only each other can reach; network namespaces give exactly that without touching any
real interface. The filesystem stays shared, which stands in for the shared filesystem a
real cluster has. Every process started here is tracked by pid and stopped at the end;
the namespaces are deleted. Needs root (ip netns).
"""

from __future__ import annotations

import ipaddress
import os
import random
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path


def netns_missing_reason() -> str | None:
    """Why namespaces cannot be made here (None when they can): tests skip with this reason."""
    if os.geteuid() != 0:
        return "network namespaces need root (ip netns add)"
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is not installed"
    return None


def _used_networks() -> list[ipaddress.IPv4Network]:
    out = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True, check=True).stdout
    nets = []
    for line in out.splitlines():
        parts = line.split()
        if "inet" in parts:
            nets.append(ipaddress.ip_interface(parts[parts.index("inet") + 1]).network)
    return nets


def _free_subnet() -> ipaddress.IPv4Network:
    """A private /24 no interface on this machine uses (10.213.0.0/16 range, random)."""
    used = _used_networks()
    for _ in range(100):
        net = ipaddress.ip_network(f"10.213.{random.randint(1, 254)}.0/24")
        if not any(net.overlaps(u) for u in used):
            return net
    raise RuntimeError("no free 10.213.x.0/24 subnet found")


def _ip(*argv: str) -> None:
    subprocess.run(["ip", *argv], check=True, capture_output=True, timeout=20)


@dataclass
class Host:
    """One namespace: its name and address; `cmd` prefixes a command to run inside it.

    nsenter enters only the network namespace: `ip netns exec` would also remount /sys,
    hiding the cgroup mounts slurmd needs.
    """

    ns: str
    ip: str

    def cmd(self, argv: list[str]) -> list[str]:
        return ["nsenter", f"--net=/run/netns/{self.ns}", "--", *argv]


@dataclass
class Daemons:
    """Processes a test started, stopped by pid (their process group) at the end."""

    procs: list[subprocess.Popen] = field(default_factory=list)

    def start(self, argv: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=env, start_new_session=True,
            )
        self.procs.append(proc)
        return proc

    def stop_all(self, grace: float = 10.0) -> None:
        """SIGTERM each process group, then SIGKILL what is left after `grace` seconds."""
        for proc in reversed(self.procs):
            _signal_group(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for proc in reversed(self.procs):
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            _signal_group(proc.pid, signal.SIGKILL)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        self.procs.clear()


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def kill_processes_mentioning(marker: str, grace: float = 5.0) -> list[int]:
    """Kill (by pid) every process whose command line contains `marker`, a path unique to a test.

    Ray and slurmstepd start helpers in new sessions, out of reach of the process-group kill;
    the test's own temporary folder in their command line or environment identifies them.
    """
    spared = _ancestors()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in spared:
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if marker in cmdline:
            found.append(int(entry.name))
    for pid in found:
        _kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() for p in found):
        time.sleep(0.2)
    for pid in found:
        _kill(pid, signal.SIGKILL)
    return found


def _ancestors() -> set[int]:
    """This process and its parents: never ours to kill, whatever their command line says."""
    pids, pid = set(), os.getpid()
    while pid > 1:
        pids.add(pid)
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            break
        pid = int(stat.rsplit(")", 1)[1].split()[1])
    return pids


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


class NetnsPair:
    """Two namespaces `a` and `b`, joined by a veth pair, lo up in each, a private /24 between them.

    Both ends have the same name, IFNAME, so that one GLOO_SOCKET_IFNAME fits every "host":
    they share this machine's hostname, which resolves to loopback, and gloo would otherwise
    bind there and try to reach its peer at 127.0.0.1.
    """

    IFNAME = "mmx0"

    def __init__(self, tag: str) -> None:
        tag = f"mmx{os.getpid() % 100000}{tag}"[:10]
        net = _free_subnet()
        hosts = list(net.hosts())
        self.a = Host(f"{tag}a", str(hosts[0]))
        self.b = Host(f"{tag}b", str(hosts[1]))
        self.prefix = net.prefixlen

    def __enter__(self) -> NetnsPair:
        try:
            self._create()
        except BaseException:
            self.delete()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.delete()

    def _create(self) -> None:
        for host in (self.a, self.b):
            _ip("netns", "add", host.ns)
            _ip("-n", host.ns, "link", "set", "lo", "up")
        dev = self.IFNAME
        _ip("link", "add", dev, "netns", self.a.ns, "type", "veth", "peer", "name", dev, "netns", self.b.ns)
        for host in (self.a, self.b):
            _ip("-n", host.ns, "addr", "add", f"{host.ip}/{self.prefix}", "dev", dev)
            _ip("-n", host.ns, "link", "set", dev, "up")
        self._wait_reachable()

    def _wait_reachable(self, timeout: float = 15.0) -> None:
        """The link needs a moment after `up`; ping once per try, bounded."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ok = subprocess.run(
                self.a.cmd(["ping", "-c", "1", "-W", "1", self.b.ip]), capture_output=True
            ).returncode == 0 if shutil.which("ping") else True
            if ok:
                return
            time.sleep(0.3)
        raise RuntimeError(f"{self.a.ns} cannot reach {self.b.ip} after {timeout:.0f} s")

    def delete(self) -> None:
        for host in (self.a, self.b):
            subprocess.run(["ip", "netns", "del", host.ns], capture_output=True, timeout=20)


def wait_until(check, timeout: float, what: str, interval: float = 0.5):
    """Poll `check()` until it returns something truthy; fail naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - shown if the wait times out
            last_error = exc
        time.sleep(interval)
    extra = f" (last error: {last_error})" if last_error else ""
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}{extra}")
