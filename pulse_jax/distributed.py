"""Several processes (hosts, or one per GPU) upsampling one set of inputs together.

``jax.distributed`` joins the processes: it finds them (Slurm, Open MPI and Cloud TPU are detected;
elsewhere pass the coordinator, the process count and this process's id), and gives a barrier.
PULSE's searches are independent, so ``pulse-jax upsample --distributed`` splits the inputs, not
the program: each process searches its share with its own devices and writes its own outputs, and
no process waits on another until the end. For one program over every host's devices, see
``search(devices=jax.devices())``.
"""

from __future__ import annotations

import dataclasses
import socket
import time
import uuid
from collections.abc import Sequence

import jax

from pulse_jax.errors import PulseJaxError

# How long a process that finished waits for the others: shares are balanced, but one process may get
# the harder inputs or split its batches after running out of memory.
WAIT_FOR_OTHERS_S = 7 * 24 * 3600


@dataclasses.dataclass(frozen=True)
class ProcessGroup:
    """This process's place in the job: ``index`` of ``count`` (0 of 1 when alone), and an id the
    processes of one job share (so that files left by an earlier job are told apart)."""

    index: int = 0
    count: int = 1
    job: str = ""

    def share(self, names: Sequence[str]) -> set[str]:
        """The names this process owns: the sorted distinct names dealt out in turn.

        Dealing by name (not by file) keeps every file that would write the same output on one
        process, where the clash is found and reported.
        """
        distinct = sorted(set(names))
        return set(distinct[self.index::self.count])

    def barrier(self, name: str, timeout_s: int = WAIT_FOR_OTHERS_S) -> None:
        """Wait until every process gets here (nothing to wait for when alone).

        A barrier of jax.distributed's coordination service, not a collective over the devices: a
        device collective gives up after ~30 s on some backends, and processes may end far apart.
        """
        if self.count > 1:
            try:
                _client().wait_at_barrier(f"pulse-jax/{self.job}/{name}", timeout_s * 1000)
            except Exception as e:  # noqa: BLE001 - jaxlib's error types are not public
                raise PulseJaxError(f"the processes did not all finish ({type(e).__name__}: {str(e)[:300]})") from None


JOIN_TIMEOUT_S = 300  # how long a process waits for the others to start (JAX's own default)


def split_address(coordinator: str) -> tuple[str, int]:
    host, sep, port = coordinator.rpartition(":")
    try:
        number = int(port)
    except ValueError:
        number = -1
    if not sep or not host or not 0 < number < 65536:
        raise PulseJaxError(f"--coordinator {coordinator!r}: write HOST:PORT, process 0's host and a free port on it "
                            "(e.g. node17:1234)")
    return host.strip("[]"), number


def rendezvous(coordinator: str, count: int, index: int, timeout_s: float) -> None:
    """Wait until all ``count`` processes are there, before jax.distributed (whose own wait, when a process
    never comes, ends the process with a C++ check failure after 300 s): process 0 listens on the
    coordinator's port for the others, each of the others knocks until it is answered. A process left
    alone says so in one line (PulseJaxError) when ``timeout_s`` has passed."""
    host, port = split_address(coordinator)
    deadline = time.monotonic() + timeout_s
    if index == 0:
        try:
            server = socket.create_server(("", port), reuse_port=hasattr(socket, "SO_REUSEPORT"))
        except OSError as e:
            raise PulseJaxError(f"--coordinator {coordinator}: process 0 cannot listen on port {port} "
                                f"({e.strerror or e}); choose a free port") from None
        joined: dict[int, socket.socket] = {}
        with server:
            while len(joined) < count - 1:
                left = deadline - time.monotonic()
                if left <= 0:
                    for conn in joined.values():
                        conn.close()
                    missing = sorted(set(range(1, count)) - set(joined))
                    raise PulseJaxError(f"only {len(joined) + 1} of {count} processes joined within {timeout_s:g} s "
                                        f"(missing: {', '.join(map(str, missing))}): start the same command with "
                                        f"--coordinator {coordinator} in each, or give them --join-timeout longer")
                server.settimeout(min(left, 1.0))
                try:
                    conn, _ = server.accept()
                except TimeoutError:
                    continue
                conn.settimeout(5)
                try:
                    peer = int(conn.recv(16).decode().strip() or -1)
                except (OSError, ValueError):
                    conn.close()
                    continue
                if 0 < peer < count and peer not in joined:
                    joined[peer] = conn
                else:
                    conn.close()
            for conn in joined.values():
                with conn:
                    conn.sendall(b"go\n")
        return
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise PulseJaxError(f"could not reach the coordinator {coordinator} within {timeout_s:g} s: is process 0 "
                                "running there, with the same --coordinator? (--join-timeout waits longer)")
        try:
            with socket.create_connection((host, port), timeout=min(left, 2.0)) as conn:
                conn.sendall(f"{index}\n".encode())
                conn.settimeout(left)
                if conn.recv(8).startswith(b"go"):
                    return
        except (TimeoutError, OSError):
            pass
        time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))


def initialize(coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, join_timeout_s: float = JOIN_TIMEOUT_S) -> ProcessGroup:
    """Join the job (``jax.distributed.initialize``); must run before anything else uses jax.

    With no arguments the cluster is detected (Slurm, Open MPI, Cloud TPU, or the JAX_COORDINATOR_ADDRESS
    environment variable with the other two given). With a coordinator given, the processes first meet
    (``rendezvous``), so that one left alone says so instead of being ended by jax.
    """
    given = [v is not None for v in (coordinator, num_processes, process_id)]
    if any(given) and not all(given):
        raise PulseJaxError("pass all of --coordinator HOST:PORT, --num-processes N and --process-id I, or none "
                            "of them to detect the cluster (Slurm, Open MPI, Cloud TPU)")
    if num_processes is not None and not 0 <= process_id < num_processes:
        raise PulseJaxError(f"--process-id must be in 0..{num_processes - 1}, got {process_id}")
    if coordinator is not None:
        split_address(coordinator)
        if num_processes > 1:
            rendezvous(coordinator, num_processes, process_id, join_timeout_s)
    try:
        jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                                   process_id=process_id, initialization_timeout=int(max(join_timeout_s, 60)))
    except (ValueError, RuntimeError, TypeError) as e:
        raise PulseJaxError(f"could not join the distributed job: {e}. Outside Slurm, Open MPI or Cloud TPU, "
                            "pass --coordinator HOST:PORT (process 0's address), --num-processes and "
                            "--process-id to every process") from None
    return ProcessGroup(jax.process_index(), jax.process_count(), _job_id())


def _client():
    """jax.distributed's client (the coordination service): barriers and a key-value store."""
    from orbax.checkpoint import multihost

    return multihost.get_jax_distributed_client()


def _job_id() -> str:
    """Process 0 draws an id and publishes it; the others read it."""
    key = "pulse-jax/job-id"
    if jax.process_index() == 0:
        job = uuid.uuid4().hex[:12]
        _client().key_value_set(key, job)
        return job
    return _client().blocking_key_value_get(key, 600_000)

