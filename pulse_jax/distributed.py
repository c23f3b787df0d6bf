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


def initialize(coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> ProcessGroup:
    """Join the job (``jax.distributed.initialize``); must run before anything else uses jax.

    With no arguments the cluster is detected (Slurm, Open MPI, Cloud TPU, or the JAX_COORDINATOR_ADDRESS
    environment variable with the other two given).
    """
    given = [v is not None for v in (coordinator, num_processes, process_id)]
    if any(given) and not all(given):
        raise PulseJaxError("pass all of --coordinator HOST:PORT, --num-processes N and --process-id I, or none "
                            "of them to detect the cluster (Slurm, Open MPI, Cloud TPU)")
    if num_processes is not None and not 0 <= process_id < num_processes:
        raise PulseJaxError(f"--process-id must be in 0..{num_processes - 1}, got {process_id}")
    try:
        jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                                   process_id=process_id)
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

