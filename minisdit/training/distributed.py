"""Communicators: how the processes that share a batch exchange gradients (data parallelism).

Every backend offers the same five things, and the trainer uses only these (one gradient-exchange
code path, minisdit/training/trainer.py ``Trainer._exchange``):

* ``rank`` and ``world_size``: this process's index among the ``world_size`` sharing each batch;
* ``all_reduce(buffer)``: the element-wise sum over the ranks, in place, in a fixed order, so a run
  is reproducible for a given world size (the flat gradient buffer, minisdit/autograd/flat.py, and
  the step's loss terms);
* ``broadcast(buffer, root=0)``: rank ``root``'s values everywhere, in place (the parameters at the
  start, so every rank trains the same weights even if something differed when they were built);
* ``barrier()`` and ``close()``.

Why the sum of the ranks' gradients is the gradient of the whole batch: each rank takes its slice
of the batch that one process would draw (the same (seed, step) draws, minisdit/training/trainer.py)
and weights its slice's mean loss by its share n_r / N, so Σ_r (n_r/N) mean_{n in r} ℓ_n =
(1/N) Σ_n ℓ_n.  K ranks therefore train the model of one process with the whole batch, up to the
order of the float32 sums.

Backends:

* ``single``: one process; every operation returns its input (world size 1 changes nothing, not
  even the order of a sum).
* ``local`` (minisdit/training/parallel.py): forked processes on one machine with the parameters
  in shared memory; the default on a CPU (``--workers``).
* ``mpi`` (mpi4py, the ``.[mpi]`` extra): CPU processes on one or many machines, started by
  ``mpiexec -n K python -m minisdit.train``.  ``all_reduce`` is an ``MPI_Reduce`` to rank 0
  followed by an ``MPI_Bcast``: MPI promises nothing about an Allreduce giving every rank the
  same bits, a reduction at one rank does, and the ranks' weights must stay bitwise equal.
* ``nccl`` (CuPy's ``cupy.cuda.nccl``): one process per GPU, on the training stream; NCCL's ring
  reduction gives every rank the same bits.  The NCCL unique id reaches the ranks through MPI when
  the run was started by ``mpiexec``, else through ``MASTER_ADDR``/``MASTER_PORT`` (rank 0 serves
  it over TCP to the others; ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` as ``torchrun`` sets them).

A rank whose parent dies must not live on, spinning in a collective: on Linux every MPI and NCCL
rank asks the kernel for SIGKILL when its parent (``mpiexec``'s proxy, ``torchrun``) dies
(``prctl(PR_SET_PDEATHSIG)``); a rank that dies makes ``mpiexec`` end the others.
"""
from __future__ import annotations

import ctypes
import os
import signal
import socket
import sys
import time

import numpy as np

from ..autograd import backend

BACKENDS = ("local", "mpi", "nccl")
# environment variables that say "started by an MPI launcher" (MPICH/hydra, Open MPI, PMIx) and their size
MPI_SIZE_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "MPI_LOCALNRANKS")
PR_SET_PDEATHSIG = 1
NCCL_ID_TIMEOUT_S = 300.0  # how long the ranks wait for rank 0 to serve the NCCL id


class DistributedError(RuntimeError):
    """A communicator cannot be made or a peer failed; the message says what to do."""


def die_with_parent() -> None:
    """Ask the kernel to SIGKILL this process when the thread that started it dies (Linux only;
    elsewhere the EOF of a pipe or a failed collective ends it)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        return
    # the parent may have died before the request was made: then we are already orphaned
    if os.getppid() == 1:
        os._exit(1)


def launched_by_mpi() -> int:
    """The world size an MPI launcher gave this process (0: not started by one)."""
    for name in MPI_SIZE_VARIABLES:
        value = os.environ.get(name)
        if value and value.isdigit():
            return int(value)
    return 0


def launched_by_torchrun() -> int:
    """The world size of ``RANK``/``WORLD_SIZE`` (as torchrun sets them); 0 when unset."""
    value = os.environ.get("WORLD_SIZE")
    return int(value) if value and value.isdigit() and "RANK" in os.environ else 0


def choose_backend(requested: str | None, device: str) -> str:
    """The backend of ``--backend`` (None: from how the process was started and the device)."""
    if requested is not None:
        if requested not in BACKENDS:
            raise ValueError(f"unknown backend {requested!r}; choose one of {', '.join(BACKENDS)}")
        return requested
    if launched_by_mpi() > 1 or launched_by_torchrun() > 1:
        return "nccl" if device == "gpu" else "mpi"
    return "local"


class SingleProcess:
    """World size 1: nothing to exchange."""

    name = "single"
    rank, world_size = 0, 1

    def start_step(self, step: int):
        pass

    def all_reduce(self, buffer):
        return buffer

    def broadcast(self, buffer, root: int = 0):
        return buffer

    def barrier(self):
        pass

    def abort(self, code: int = 1):
        pass

    def close(self):
        pass


def _import_mpi():
    try:
        from mpi4py import MPI
    except ImportError as error:
        raise DistributedError(f"the mpi backend needs mpi4py and an MPI ({error}); install the extra: "
                               "pip install -e \".[mpi]\"") from error
    return MPI


class MPICommunicator:
    """CPU ranks over MPI (``mpiexec -n K``); buffers are NumPy arrays."""

    name = "mpi"

    def __init__(self):
        self.MPI = _import_mpi()
        die_with_parent()
        self.comm = self.MPI.COMM_WORLD
        self.rank, self.world_size = self.comm.Get_rank(), self.comm.Get_size()

    def start_step(self, step: int):
        pass  # every rank runs the same loop: nothing to announce

    def all_reduce(self, buffer):
        """The sum over ranks, taken at rank 0 and sent to all (the same bits everywhere)."""
        if self.world_size == 1:
            return buffer
        if not isinstance(buffer, np.ndarray) or not buffer.flags.c_contiguous:
            raise TypeError("the mpi backend reduces contiguous NumPy arrays; use the nccl backend for GPU arrays")
        MPI = self.MPI
        if self.rank == 0:
            self.comm.Reduce(MPI.IN_PLACE, buffer, op=MPI.SUM, root=0)
        else:
            self.comm.Reduce(buffer, None, op=MPI.SUM, root=0)
        self.comm.Bcast(buffer, root=0)
        return buffer

    def broadcast(self, buffer, root: int = 0):
        if self.world_size > 1:
            self.comm.Bcast(buffer, root=root)
        return buffer

    def barrier(self):
        self.comm.Barrier()

    def abort(self, code: int = 1):
        """End every rank now (after this rank's one-line error): the others may wait in a collective."""
        if self.world_size > 1:
            sys.stdout.flush()
            sys.stderr.flush()
            self.comm.Abort(code)

    def close(self):
        pass  # mpi4py finalises MPI when the process exits


def _serve_nccl_id(unique_id: bytes, address: str, port: int, peers: int) -> None:
    """Rank 0: hand the NCCL id to ``peers`` connecting ranks over TCP (the standard library only)."""
    # every interface: MASTER_ADDR is how the others reach this machine, and a host name may resolve
    # here to a loopback address they cannot reach
    with socket.create_server(("", port)) as server:
        server.settimeout(NCCL_ID_TIMEOUT_S)
        for _ in range(peers):
            try:
                connection, _ = server.accept()
            except socket.timeout as error:
                raise DistributedError(f"not every rank connected to {address}:{port} within {NCCL_ID_TIMEOUT_S:g} s; "
                                       "start all WORLD_SIZE ranks with the same MASTER_ADDR and MASTER_PORT") from error
            with connection:
                connection.sendall(unique_id)


def _fetch_nccl_id(address: str, port: int, size: int) -> bytes:
    """Any other rank: read the NCCL id from rank 0, retrying while rank 0 starts its server."""
    deadline = time.monotonic() + NCCL_ID_TIMEOUT_S
    while True:
        try:
            with socket.create_connection((address, port), timeout=NCCL_ID_TIMEOUT_S) as connection:
                data = b""
                while len(data) < size:
                    chunk = connection.recv(size - len(data))
                    if not chunk:
                        break
                    data += chunk
                if len(data) == size:
                    return data
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise DistributedError(f"could not read the NCCL id from rank 0 at {address}:{port}; check MASTER_ADDR "
                                   "and MASTER_PORT and that rank 0 runs")
        time.sleep(0.2)  # rank 0 is not listening yet: a retry interval, not a synchronisation


class NCCLCommunicator:
    """One GPU per rank over NCCL; buffers are CuPy arrays on this rank's GPU."""

    name = "nccl"

    def __init__(self):
        cupy = backend.get_array_module("gpu")  # DeviceUnavailableError with the reason when there is no GPU
        try:
            from cupy.cuda import nccl
        except ImportError as error:  # reported, never swallowed: this CuPy was built without NCCL
            raise DistributedError(f"the nccl backend needs CuPy's NCCL bindings, which this CuPy lacks ({error}); "
                                   "install CuPy's NCCL (python -m cupyx.tools.install_library --library nccl) or "
                                   "use --backend mpi on CPUs") from error
        if not getattr(nccl, "available", True):
            raise DistributedError("this CuPy was built without NCCL (cupy.cuda.nccl.available is False); "
                                   "install a CuPy wheel with NCCL, or use --backend mpi on CPUs")
        die_with_parent()
        self.cupy, self.nccl = cupy, nccl
        size = launched_by_mpi()
        if size:
            MPI = _import_mpi()
            world = MPI.COMM_WORLD
            self.rank, self.world_size = world.Get_rank(), world.Get_size()
            local_rank = int(os.environ.get("MPI_LOCALRANKID", os.environ.get("OMPI_COMM_WORLD_LOCAL_RANK",
                                                                                  self.rank)))
            unique_id = np.zeros(nccl.NCCL_UNIQUE_ID_BYTES if hasattr(nccl, "NCCL_UNIQUE_ID_BYTES") else 128, np.int8)
            if self.rank == 0:
                unique_id[:] = np.array(nccl.get_unique_id(), dtype=np.int64).astype(np.int8)
            world.Bcast(unique_id, root=0)
        else:
            self.rank = int(os.environ.get("RANK", "0"))
            self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
            local_rank = int(os.environ.get("LOCAL_RANK", self.rank))
            address = os.environ.get("MASTER_ADDR", "127.0.0.1")
            port = int(os.environ.get("MASTER_PORT", "29500"))
            if self.rank == 0:
                unique_id = np.array(nccl.get_unique_id(), dtype=np.int64).astype(np.int8)
                if self.world_size > 1:
                    _serve_nccl_id(unique_id.tobytes(), address, port, self.world_size - 1)
            else:
                unique_id = np.frombuffer(_fetch_nccl_id(address, port, 128), dtype=np.int8)
        devices = cupy.cuda.runtime.getDeviceCount()
        cupy.cuda.Device(local_rank % devices).use()  # one GPU per rank of this machine
        self.comm = nccl.NcclCommunicator(self.world_size, tuple(int(v) for v in unique_id), self.rank)
        self._types = {np.dtype(np.float32): nccl.NCCL_FLOAT32, np.dtype(np.float64): nccl.NCCL_FLOAT64}

    def start_step(self, step: int):
        pass

    def _type(self, buffer):
        try:
            return self._types[np.dtype(buffer.dtype)]
        except KeyError:
            raise TypeError(f"the nccl backend reduces float32 and float64 arrays, not {buffer.dtype}") from None

    def all_reduce(self, buffer):
        if not isinstance(buffer, self.cupy.ndarray) or not buffer.flags.c_contiguous:
            raise TypeError("the nccl backend reduces contiguous CuPy arrays (the model on the GPU)")
        stream = self.cupy.cuda.get_current_stream().ptr
        self.comm.allReduce(buffer.data.ptr, buffer.data.ptr, buffer.size, self._type(buffer), self.nccl.NCCL_SUM,
                            stream)
        return buffer

    def broadcast(self, buffer, root: int = 0):
        stream = self.cupy.cuda.get_current_stream().ptr
        self.comm.bcast(buffer.data.ptr, buffer.size, self._type(buffer), root, stream)
        return buffer

    def barrier(self):
        self.all_reduce(self.cupy.zeros(1, np.float32))
        self.cupy.cuda.get_current_stream().synchronize()

    def abort(self, code: int = 1):
        self.comm.abort()
        if launched_by_mpi():
            _import_mpi().COMM_WORLD.Abort(code)

    def close(self):
        if self.comm is not None:
            self.comm.destroy()
            self.comm = None


def make_communicator(name: str):
    """The communicator of backend ``name`` for a process started by its launcher (``local`` is made
    by the trainer itself, which forks its workers: minisdit/training/parallel.py)."""
    if name == "mpi":
        return MPICommunicator()
    if name == "nccl":
        return NCCLCommunicator()
    raise ValueError(f"make_communicator makes the mpi and nccl communicators, not {name!r}")
