"""A real two-node SLURM cluster on one machine, for the `--on slurm` tests.

Installs Debian's slurmctld/slurmd/slurm-client/munge when missing, then starts `munged` (as
the munge user, on its own socket), `slurmctld` and one `slurmd -N NAME` per node from a
config written to a temporary folder. Each node's slurmd lives in its own network namespace,
so an sbatch script really starts Ray head and worker on different addresses. systemd is
not running here, so the daemons are started directly and stopped by pid at the end.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.netns import Daemons, Host, NetnsPair, kill_processes_mentioning, wait_until

PACKAGES = ["slurmctld", "slurmd", "slurm-client", "munge"]
BINARIES = ["slurmctld", "slurmd", "sbatch", "srun", "scontrol", "squeue", "munged"]


def ensure_slurm_installed(timeout: float = 300) -> str | None:
    """Install the Debian packages if a binary is missing; return a skip reason on failure."""
    if all(shutil.which(b) for b in BINARIES):
        return None
    if shutil.which("apt-get") is None:
        return "SLURM is not installed and apt-get is not available to install it"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for argv in (["apt-get", "install", "-y", "-q", *PACKAGES],):
        done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=timeout)
        if done.returncode:
            subprocess.run(["apt-get", "update", "-q"], capture_output=True, env=env, timeout=timeout)
            done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=timeout)
        if done.returncode:
            return f"apt-get install {' '.join(PACKAGES)} failed: {done.stderr[-500:]}"
    missing = [b for b in BINARIES if not shutil.which(b)]
    return f"SLURM binaries still missing after install: {missing}" if missing else None


@dataclass
class SlurmCluster:
    """Handle the tests use: the config path, the two hosts, an env for client commands."""

    conf: Path
    root: Path
    login: Host  # the controller's namespace; client commands (sbatch, squeue) run here
    nodes: dict[str, Host]

    def env(self) -> dict[str, str]:
        env = dict(os.environ, SLURM_CONF=str(self.conf))
        for key in [k for k in env if k.startswith(("SLURM_", "SBATCH_", "SRUN_")) and k != "SLURM_CONF"]:
            env.pop(key)
        return env

    def run(self, argv: list[str], timeout: float = 60) -> subprocess.CompletedProcess:
        """Run a client command on the login host (namespace of slurmctld)."""
        return subprocess.run(
            self.login.cmd(argv), capture_output=True, text=True, timeout=timeout, env=self.env()
        )

    def nodes_idle(self) -> bool:
        out = self.run(["sinfo", "-h", "-N", "-o", "%N %T"]).stdout.split()
        states = dict(zip(out[::2], out[1::2], strict=False))
        return len(states) == len(self.nodes) and all(s in ("idle", "mixed", "allocated") for s in states.values())


def _munge_dir() -> Path:
    """munged refuses folders others can write or it cannot reach: a private one under /tmp."""
    top = Path(tempfile.mkdtemp(prefix="mmx-munge-", dir="/tmp"))
    top.chmod(0o755)
    munge = pwd.getpwnam("munge")
    os.chown(top, munge.pw_uid, munge.pw_gid)
    return top


def _write_conf(root: Path, net: NetnsPair, munge_socket: Path, cpus: int, mem_mb: int) -> Path:
    nodes = {"n1": net.a, "n2": net.b}
    lines = [
        "ClusterName=mmx",
        f"SlurmctldHost={socket.gethostname().split('.')[0]}({net.a.ip})",
        "MailProg=/bin/true",
        "SlurmctldPort=6817",
        "SlurmdPort=6818",
        "SlurmUser=root",
        "SlurmdUser=root",
        "AuthType=auth/munge",
        "CredType=cred/munge",
        f"AuthInfo=socket={munge_socket},cred_expire=10",
        f"StateSaveLocation={root}/state",
        f"SlurmdSpoolDir={root}/spool/%n",
        f"SlurmctldPidFile={root}/slurmctld.pid",
        f"SlurmdPidFile={root}/slurmd-%n.pid",
        f"SlurmctldLogFile={root}/slurmctld.log",
        f"SlurmdLogFile={root}/slurmd-%n.log",
        "SlurmctldDebug=info",
        "SlurmdDebug=info",
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core",
        "JobAcctGatherType=jobacct_gather/none",
        "AccountingStorageType=accounting_storage/none",
        "JobCompType=jobcomp/none",
        "MpiDefault=none",
        "SwitchType=switch/none",
        "ReturnToService=2",
        "SlurmdParameters=config_overrides",
        "JobRequeue=1",
        "MinJobAge=300",
        "SchedulerType=sched/backfill",
        "SlurmctldTimeout=30",
        "SlurmdTimeout=30",
        "InactiveLimit=0",
        "KillWait=10",
        "Waittime=0",
    ]
    for name, host in nodes.items():
        lines.append(f"NodeName={name} NodeAddr={host.ip} NodeHostname={name} CPUs={cpus} RealMemory={mem_mb} State=UNKNOWN")
    lines.append(f"PartitionName=debug Nodes={','.join(nodes)} Default=YES MaxTime=INFINITE State=UP")
    conf = root / "slurm.conf"
    conf.write_text("\n".join(lines) + "\n")
    (root / "state").mkdir(exist_ok=True)
    for name in nodes:
        (root / "spool" / name).mkdir(parents=True, exist_ok=True)
    return conf


@contextmanager
def slurm_two_nodes(root: Path, cpus: int = 2, mem_mb: int = 4000) -> Iterator[SlurmCluster]:
    """munged + slurmctld (namespace a) + slurmd n1 (a) and n2 (b); yield when both nodes are idle."""
    reason = ensure_slurm_installed()
    if reason:
        raise RuntimeError(reason)
    root.mkdir(parents=True, exist_ok=True)
    daemons = Daemons()
    munge_dir = _munge_dir()
    munge_socket = munge_dir / "munge.socket"
    try:
        with NetnsPair("s") as net:
            conf = _write_conf(root, net, munge_socket, cpus, mem_mb)
            cluster = SlurmCluster(conf, root, net.a, {"n1": net.a, "n2": net.b})
            env = cluster.env()
            daemons.start(
                ["runuser", "-u", "munge", "--", "munged", "--foreground", f"--socket={munge_socket}",
                 f"--pid-file={munge_dir}/munged.pid", f"--log-file={munge_dir}/munged.log",
                 f"--seed-file={munge_dir}/munged.seed", "--key-file=/etc/munge/munge.key", "--force"],
                root / "munged.out", env=env,
            )
            wait_until(munge_socket.exists, 30, "munged's socket")
            try:
                daemons.start(net.a.cmd(["slurmctld", "-D", "-i", "-f", str(conf)]), root / "slurmctld.out", env=env)
                wait_until(lambda: cluster.run(["scontrol", "ping"], timeout=15).returncode == 0, 60, "slurmctld")
                for name, host in cluster.nodes.items():
                    daemons.start(host.cmd(["slurmd", "-D", "-N", name, "-f", str(conf)]), root / f"slurmd-{name}.out", env=env)
                wait_until(cluster.nodes_idle, 90, "both slurmd nodes to become idle")
                yield cluster
            finally:
                _cancel_all(cluster)
                daemons.stop_all(grace=15)
                kill_processes_mentioning(str(root))
                for name in cluster.nodes:  # the sbatch script's per-node Ray temp dirs
                    for folder in Path("/tmp").glob(f"mmexpr-ray-*-{name}"):
                        shutil.rmtree(folder, ignore_errors=True)
    finally:
        shutil.rmtree(munge_dir, ignore_errors=True)


def _cancel_all(cluster: SlurmCluster) -> None:
    """Cancel whatever the tests left queued, so slurmd's job processes go first."""
    try:
        cluster.run(["scancel", "--full", "--partition=debug"], timeout=15)
        wait_until(lambda: not cluster.run(["squeue", "-h"], timeout=15).stdout.strip(), 30, "jobs to end")
    except Exception:  # noqa: BLE001 - best effort before the daemons are stopped by pid
        pass
