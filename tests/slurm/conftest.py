"""A real SLURM controller on this machine for the ``slurm`` tier: Debian's packages (installed when missing, as
``.ci/run`` installs them), a private munge daemon, ``slurmctld`` and ``slurmd`` for localhost started by hand (no
systemd: ``ProctrackType=proctrack/linuxproc``, ``TaskPlugin=task/none``) in a temporary folder with their own
ports, socket and key, so nothing of the machine's own configuration is read or changed; every daemon is stopped by
the pid of the process the fixture started. Each test here also writes its row of ``reports/reliability.md``."""

from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.reliability.conftest import _OUTCOME, pytest_runtest_makereport, row  # noqa: F401  (the row machinery)
from tests.test_sweep import postgres  # noqa: F401  (the PostgreSQL the sweep tests start)

PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge")
PROGRAMS = ("slurmctld", "slurmd", "sbatch", "munged")


def _program(name: str) -> str | None:
    """A program on PATH, or in /usr/sbin (where the daemons are, off a plain user's PATH)."""
    found = shutil.which(name)
    if found is None and os.access(f"/usr/sbin/{name}", os.X_OK):
        found = f"/usr/sbin/{name}"
    return found


def _install() -> float | None:
    """Install Debian's SLURM packages when a program is missing (root, or sudo without a password); the seconds
    it took, or None when nothing was needed. Skips the tier (fails it under CI) when they cannot be installed."""
    if all(_program(p) for p in PROGRAMS):
        return None
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    started = time.perf_counter()
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        if not shutil.which("apt-get") or (sudo and not shutil.which("sudo")):
            raise OSError("no apt-get (or no sudo)")
        subprocess.run([*sudo, "apt-get", "update", "-qq"], check=True, capture_output=True, env=env, timeout=600)
        subprocess.run([*sudo, "apt-get", "install", "-y", "-qq", "--no-install-recommends", *PACKAGES],
                       check=True, capture_output=True, env=env, timeout=900)  # fmt: skip
    except (OSError, subprocess.SubprocessError) as error:
        message = f"SLURM is not installed and cannot be ({error}); .ci/run installs {' '.join(PACKAGES)}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return time.perf_counter() - started


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Slurm:
    """The running controller: its folder, config and the environment every SLURM command needs (SLURM_CONF)."""

    folder: Path
    conf: Path
    node: str
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    def run(self, *command: str, check: bool = False, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(list(command), capture_output=True, text=True, timeout=timeout, check=check)

    def squeue(self, job: str) -> list[tuple[str, str, str]]:
        """(task, state, reason) of each task of ``job`` SLURM still queues or runs."""
        out = self.run("squeue", "-h", "-r", "-j", job, "-o", "%i|%T|%r").stdout
        return [tuple(line.split("|")) for line in out.splitlines() if line.strip()]

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted((self.folder / "log").glob("*.log")))


def _config(folder: Path, node: str, cpus: int) -> str:
    return f"""ClusterName=ablations
SlurmctldHost={node}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={folder}/run/munge.socket
CredType=cred/munge
StateSaveLocation={folder}/state
SlurmdSpoolDir={folder}/spool
SlurmctldPidFile={folder}/run/slurmctld.pid
SlurmdPidFile={folder}/run/slurmd.pid
SlurmctldLogFile={folder}/log/slurmctld.log
SlurmdLogFile={folder}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
JobCompType=jobcomp/filetxt
JobCompLoc={folder}/log/jobcomp.txt
JobRequeue=1
ReturnToService=2
MinJobAge=600
KillWait=10
NodeName={node} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory=1000 State=UNKNOWN
PartitionName=debug Nodes={node} Default=YES MaxTime=INFINITE State=UP
PartitionName=short Nodes={node} MaxTime=1 State=UP
PartitionName=lab Nodes={node} MaxTime=INFINITE AllowAccounts=lab State=UP
"""


def _wait(predicate, timeout: float, what: str, slurm: Slurm | None = None) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise RuntimeError(f"SLURM did not come up: {what}" + (f"\n{slurm.logs()[-3000:]}" if slurm else ""))


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()  # by the pid of the process this fixture started, never by name
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)


@pytest.fixture(scope="session")
def slurm():
    """munged, slurmctld and slurmd for this host, up for the whole session; jobs left are cancelled and every
    daemon stopped at the end."""
    installed = _install()
    folder = Path(tempfile.mkdtemp(prefix="ablations-slurm-"))
    folder.chmod(0o755)  # munged wants its socket's folders searchable by all
    for name, mode in (("munge", 0o700), ("run", 0o755), ("state", 0o700), ("spool", 0o755), ("log", 0o755)):
        (folder / name).mkdir()
        (folder / name).chmod(mode)
    key = folder / "munge" / "munge.key"
    key.write_bytes(os.urandom(128))
    key.chmod(stat.S_IRUSR)
    node = socket.gethostname().split(".")[0]
    conf = folder / "slurm.conf"
    conf.write_text(_config(folder, node, os.cpu_count() or 1))
    cluster = Slurm(folder, conf, node)
    if installed is not None:
        cluster.timings["install_s"] = installed
    before = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(conf)  # this process, the commands it runs and the jobs they submit
    started = time.perf_counter()
    try:
        cluster.processes["munged"] = subprocess.Popen(
            [_program("munged"), "--foreground", f"--socket={folder}/run/munge.socket", f"--key-file={key}",
             f"--pid-file={folder}/run/munged.pid", f"--log-file={folder}/log/munged.log",
             f"--seed-file={folder}/munge/seed"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        _wait(lambda: (folder / "run" / "munge.socket").exists(), 20, "munged's socket")
        for daemon in ("slurmctld", "slurmd"):
            cluster.processes[daemon] = subprocess.Popen(
                [_program(daemon), "-D", "-f", str(conf)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip
        _wait(lambda: "idle" in cluster.run("sinfo", "-h", "-o", "%T", "-p", "debug").stdout, 60, "an idle node",
              cluster)  # fmt: skip
        cluster.timings["start_s"] = time.perf_counter() - started
        yield cluster
    finally:
        try:
            if "slurmctld" in cluster.processes:
                cluster.run("scancel", f"--user={os.getuid()}")
                deadline = time.time() + 60
                while time.time() < deadline and cluster.run("squeue", "-h").stdout.strip():
                    time.sleep(0.5)
        finally:
            for name in ("slurmd", "slurmctld", "munged"):
                if name in cluster.processes:
                    _stop(cluster.processes[name])
            if before is None:
                os.environ.pop("SLURM_CONF", None)
            else:
                os.environ["SLURM_CONF"] = before
            shutil.rmtree(folder, ignore_errors=True)
