"""A real single-node SLURM cluster (munged, slurmctld, slurmd) in a temp folder, for the tests.

Everything the cluster owns lives under one folder: the munge key and socket, ``slurm.conf``, the
controller's state, slurmd's spool, the daemons' logs. The daemons run in the foreground as
children of this process (so they are ours to stop), on two free TCP ports of 127.0.0.1, so two
test sessions on one machine do not see each other's cluster. Nothing is installed here; see
``.ci/slurm-setup.sh``.

Client commands (``sbatch``, ``squeue``, ``scontrol`` and submitit, which calls them) find this
cluster through the ``SLURM_CONF`` environment variable; jobs inherit it, so a job can requeue
itself. Needs root (slurmd starts job steps as the submitting user) and Debian's ``slurmctld``,
``slurmd``, ``slurm-client`` and ``munge`` packages.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

#: Commands the cluster needs, server daemons first.
DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("munge", "sbatch", "squeue", "sinfo", "scontrol", "scancel", "srun")
#: Where Debian puts the daemons (often not on a normal user's PATH).
_SBIN = ("/usr/sbin", "/sbin", "/usr/local/sbin")

_PR_SET_PDEATHSIG = 1  # prctl option (linux/prctl.h)

#: Seconds a requeued job waits before it may start again (SLURM's ``cred_expire``; default 120).
REQUEUE_DELAY_S = 5
#: Seconds between SIGTERM and SIGKILL when a job is cancelled or requeued (default 30).
KILL_WAIT_S = 1


def find_binary(name: str) -> str | None:
    """Return the path of ``name`` on PATH or in the sbin folders, or None."""
    found = shutil.which(name)
    if found:
        return found
    for folder in _SBIN:
        path = Path(folder) / name
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
    return None


def why_unavailable() -> str | None:
    """Return why no cluster can be started here (not root, binaries missing), or None."""
    missing = [name for name in DAEMONS + CLIENTS if find_binary(name) is None]
    if missing:
        return (
            f"SLURM/munge binaries not found: {', '.join(missing)} "
            "(run .ci/slurm-setup.sh as root to install slurmctld, slurmd, slurm-client, munge)"
        )
    if os.geteuid() != 0:
        return "starting a SLURM cluster needs root (slurmd runs jobs as the submitting user)"
    return None


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM when the test process dies (even by SIGKILL)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def free_ports(count: int) -> list[int]:
    """Return ``count`` distinct TCP ports of 127.0.0.1 that were free a moment ago."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def slurm_conf(root: Path, ctld_port: int, slurmd_port: int, cpus: int, memory_mb: int) -> str:
    """Return the text of ``slurm.conf`` for one node ``localhost`` on 127.0.0.1.

    Args:
        root: the cluster's folder (state, spool, logs, munge socket).
        ctld_port: slurmctld's port.
        slurmd_port: slurmd's port.
        cpus: the node's CPUs (at most the machine's, else slurmd drains the node).
        memory_mb: the node's RealMemory.

    """
    return f"""\
ClusterName=curvbench
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={root}/munge/munge.socket,cred_expire={REQUEUE_DELAY_S}
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1,bf_interval=1
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
JobRequeue=1
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=30
KillWait={KILL_WAIT_S}
NodeName=localhost NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
"""


class SingleNodeCluster:
    """Start munged, slurmctld and slurmd in a temp folder; stop them and remove it on exit.

    Use as a context manager; inside, ``SLURM_CONF`` points at the cluster. ``cpus`` defaults to
    ``min(2, os.cpu_count())``.

    Attributes:
        root: the cluster's folder.
        conf: path of its ``slurm.conf``.
        partition: the (default) partition's name.
        cpus: the node's CPUs.

    """

    partition = "debug"

    def __init__(self, cpus: int | None = None, memory_mb: int = 2000, start_timeout_s: float = 60):
        self.cpus = cpus or min(2, os.cpu_count() or 1)
        self.memory_mb = memory_mb
        self.start_timeout_s = start_timeout_s
        self.root = Path()
        self.conf = Path()
        self._procs: list[subprocess.Popen] = []
        self._old_conf: str | None = None

    # ---------------------------------------------------------------- lifecycle

    def __enter__(self) -> SingleNodeCluster:
        reason = why_unavailable()
        if reason:
            raise RuntimeError(reason)
        # munged wants every folder above its socket to be searchable by all (0711).
        self.root = Path(tempfile.mkdtemp(prefix="curvbench-slurm-"))
        self.root.chmod(0o711)
        for sub in ("munge", "state", "spool", "log"):
            (self.root / sub).mkdir()
        (self.root / "munge").chmod(0o711)
        self.conf = self.root / "slurm.conf"
        ctld_port, slurmd_port = free_ports(2)
        self.conf.write_text(
            slurm_conf(self.root, ctld_port, slurmd_port, self.cpus, self.memory_mb)
        )
        self._old_conf = os.environ.get("SLURM_CONF")
        os.environ["SLURM_CONF"] = str(self.conf)
        try:
            self._start_munge()
            self._start(["slurmctld", "-D", "-c", "-f", str(self.conf)], "slurmctld")
            self._start(["slurmd", "-D", "-N", "localhost", "-f", str(self.conf)], "slurmd")
            self._wait_idle()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> None:
        with contextlib.suppress(Exception):
            if self._procs:
                self.scancel_all()
        for proc in reversed(self._procs):  # slurmd, slurmctld, munged
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)
        self._procs.clear()
        if self._old_conf is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = self._old_conf
        if self.root != Path() and self.root.is_dir():
            shutil.rmtree(self.root, ignore_errors=True)

    def _start(self, argv: list[str], name: str) -> subprocess.Popen:
        log = open(self.root / "log" / f"{name}.out", "wb")  # noqa: SIM115 - owned by the child
        proc = subprocess.Popen(
            [find_binary(argv[0]) or argv[0], *argv[1:]],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        log.close()
        self._procs.append(proc)
        return proc

    def _start_munge(self) -> None:
        munge = self.root / "munge"
        key = munge / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        self._start(
            [
                "munged",
                "--foreground",
                f"--key-file={key}",
                f"--socket={munge / 'munge.socket'}",
                f"--pid-file={munge / 'munged.pid'}",
                f"--log-file={munge / 'munged.log'}",
                f"--seed-file={munge / 'munged.seed'}",
            ],
            "munged",
        )
        self._wait(
            lambda: (
                (munge / "munge.socket").exists()
                and subprocess.run(
                    [find_binary("munge") or "munge", "-n", "-S", str(munge / "munge.socket")],
                    capture_output=True,
                ).returncode
                == 0
            ),
            "munged to accept credentials",
        )

    def _wait_idle(self) -> None:
        def idle() -> bool:
            out = subprocess.run(
                ["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=10
            )
            return out.returncode == 0 and out.stdout.strip() == "idle"

        self._wait(idle, "the node to be idle in sinfo")

    def _wait(self, ready, what: str) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            dead = [p for p in self._procs if p.poll() is not None]
            if dead:
                raise RuntimeError(
                    f"{Path(dead[0].args[0]).name} exited with {dead[0].returncode} while waiting "
                    f"for {what}:\n{self.logs()}"
                )
            if ready():
                return
            time.sleep(0.2)
        raise TimeoutError(
            f"timed out after {self.start_timeout_s} s waiting for {what}:\n{self.logs()}"
        )

    # ---------------------------------------------------------------- helpers for tests

    def logs(self, tail: int = 20) -> str:
        """Return the last ``tail`` lines of every daemon log (for error messages)."""
        parts = []
        for path in sorted((self.root / "log").glob("*")) + [self.root / "munge" / "munged.log"]:
            if path.is_file():
                lines = path.read_text(errors="replace").splitlines()[-tail:]
                parts.append(f"--- {path.name}\n" + "\n".join(lines))
        return "\n".join(parts)

    def squeue(self, *args: str) -> list[list[str]]:
        """Rows of ``squeue -h -r -t all -o '%i|%T|%r' <args>``: array task id, state, reason."""
        out = subprocess.run(
            ["squeue", "-h", "-r", "-t", "all", "-o", "%i|%T|%r", *args],
            capture_output=True,
            text=True,
            check=True,
        )
        return [line.split("|") for line in out.stdout.splitlines() if line.strip()]

    def scontrol(self, *args: str) -> str:
        """Run ``scontrol <args>`` against this cluster and return its stdout."""
        return subprocess.run(
            ["scontrol", *args], capture_output=True, text=True, check=True
        ).stdout

    def scancel_all(self, timeout_s: float = 15) -> None:
        """Cancel every job and wait (up to ``timeout_s``) until none is running."""
        subprocess.run(["scancel", "--full", "--user", "root"], capture_output=True, timeout=10)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            live = [r for r in self.squeue() if r[1] in ("RUNNING", "COMPLETING", "PENDING")]
            if not live:
                return
            time.sleep(0.3)
