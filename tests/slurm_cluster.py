"""A real single-node SLURM cluster for the tests: munged, slurmctld and slurmd on this machine.

Debian's ``slurm-wlm`` and ``munge`` (installed by .ci/run) run as root with a private munge key, socket,
ports and state folders, so nothing of the machine's own configuration is used or changed. Jobs are
scheduled with ``select/cons_tres`` and ``CR_Core_Memory``: a job's ``--mem`` and ``--cpus-per-task``
decide how many run at once, as on a real cluster.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "sinfo", "scontrol")


def missing() -> str:
    """Why no cluster can be started here ('' when one can)."""
    if os.geteuid() != 0:
        return "the SLURM daemons need root"
    gone = [d for d in DAEMONS if not (shutil.which(d) or Path("/usr/sbin", d).exists())]
    return f"not installed: {' '.join(gone)} (Debian slurm-wlm munge)" if gone else ""


def _exe(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    """Start with ``Cluster(folder).start()``; ``env`` points the SLURM client commands at it."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.procs: list[subprocess.Popen] = []
        self.conf = self.root / "slurm.conf"
        self.env = {"SLURM_CONF": str(self.conf)}

    def start(self, timeout_s: float = 60.0) -> "Cluster":
        r = self.root
        for d in ("munge", "state", "spool", "log", "run"):
            (r / d).mkdir(parents=True, exist_ok=True)
        (r / "munge").chmod(0o755)
        key = r / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        sock = r / "munge" / "munge.socket"
        host = socket.gethostname().split(".")[0]
        mem_mb = int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20)
        cpus = os.cpu_count() or 1
        self.conf.write_text("\n".join([
            "ClusterName=dmrimctest",
            f"SlurmctldHost={host}(127.0.0.1)",
            "SlurmUser=root", "SlurmdUser=root",
            "AuthType=auth/munge", f"AuthInfo=socket={sock}", "CredType=cred/munge",
            f"SlurmctldPort={_free_port()}", f"SlurmdPort={_free_port()}",
            f"StateSaveLocation={r / 'state'}", f"SlurmdSpoolDir={r / 'spool'}",
            f"SlurmctldPidFile={r / 'run' / 'slurmctld.pid'}", f"SlurmdPidFile={r / 'run' / 'slurmd.pid'}",
            f"SlurmctldLogFile={r / 'log' / 'slurmctld.log'}", f"SlurmdLogFile={r / 'log' / 'slurmd.log'}",
            "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none",
            "JobAcctGatherType=jobacct_gather/none", "AccountingStorageType=accounting_storage/none",
            "SchedulerType=sched/backfill", "SelectType=select/cons_tres", "SelectTypeParameters=CR_Core_Memory",
            "SchedulerParameters=sched_interval=1", "MpiDefault=none", "ReturnToService=2",
            "MinJobAge=3600",  # finished jobs stay visible to scontrol for the test's checks
            f"NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={int(mem_mb * 0.8)} State=UNKNOWN",
            "PartitionName=test Nodes=ALL Default=YES MaxTime=INFINITE State=UP DefMemPerCPU=1000",
        ]) + "\n")
        env = {**os.environ, **self.env}
        logs = r / "log"
        self._spawn([_exe("munged"), "-F", "--force", "-S", str(sock), f"--key-file={key}",
                     f"--log-file={logs / 'munged.log'}", f"--pid-file={r / 'run' / 'munged.pid'}",
                     f"--seed-file={r / 'munge' / 'seed'}"], env)
        self._wait(lambda: sock.exists(), timeout_s, "munged")
        self._spawn([_exe("slurmctld"), "-D", "-i"], env)
        self._spawn([_exe("slurmd"), "-D", "-N", host], env)
        self._wait(lambda: self.run("sinfo", "-h", "-o", "%T", check=False).strip() in ("idle", "mixed"),
                   timeout_s, "slurmd to register")
        return self

    def _spawn(self, cmd, env):
        log = open(self.root / "log" / f"{Path(cmd[0]).name}.stdout", "w")
        self.procs.append(subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT))

    def _wait(self, ready, timeout_s, what):
        t0 = time.time()
        while time.time() - t0 < timeout_s:
            if any(p.poll() is not None for p in self.procs):
                break
            try:
                if ready():
                    return
            except (subprocess.SubprocessError, OSError):
                pass
            time.sleep(0.3)
        logs = "\n".join(f"--- {f.name}\n{f.read_text(errors='replace')[-2000:]}"
                         for f in sorted((self.root / "log").glob("*")))
        self.stop()
        raise RuntimeError(f"single-node SLURM: gave up waiting for {what}\n{logs}")

    def run(self, *cmd, check=True) -> str:
        return subprocess.run(list(cmd), env={**os.environ, **self.env}, capture_output=True, text=True,
                              check=check, timeout=30).stdout

    def jobs(self) -> list[dict]:
        """Every job slurmctld knows (finished ones included): scontrol's key=value fields."""
        out = self.run("scontrol", "-o", "show", "job", check=False)
        jobs = []
        for line in out.splitlines():
            fields = {}
            for tok in line.split():
                if "=" in tok:
                    k, v = tok.split("=", 1)
                    fields[k] = v
            if "JobId" in fields:
                jobs.append(fields)
        return jobs

    def wait_idle(self, timeout_s: float = 300.0) -> None:
        """Until no job is pending or running."""
        self._wait(lambda: not self.run("squeue", "-h", check=False).strip(), timeout_s, "the queue to empty")

    def stop(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
        self.procs = []
