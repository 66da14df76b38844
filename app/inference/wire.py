"""The worker <-> mule protocol: where tensors sit in shared memory and the tiny messages that wake.

Shared memory holds one fixed slot per worker thread (index from the uWSGI worker id and the
thread), split into an input region (written by the worker) and an output region (written by
the mule). Separate regions make a late write for a dead or timed-out request harmless: it can
only land in an output region, which the slot's next request overwrites before it is answered.

Messages travel over one AF_UNIX SOCK_SEQPACKET connection per worker thread: message
boundaries for free, and a hang-up is seen at once on either side.
"""

from __future__ import annotations

import ctypes
import dataclasses
import json
import logging
import math
import mmap
import struct
from dataclasses import dataclass, field

import numpy as np

from app.inference.spec import ModelSpec, TensorSpec

log = logging.getLogger(__name__)

ALIGN = 64

# worker -> mule
INFER = 1  # payload: slot, seq, rows, deadline (CLOCK_MONOTONIC seconds, shared by all processes),
#            the model version the rows were written for, then the sizes of the inputs' variable
#            dimensions (uint32 each), if the model has any
STATUS = 2  # no payload; the mule answers with MuleStatus.pack()
RELOAD = 4  # no payload: load the version to serve now beside the current one, then switch; answered
#             with Outcome once the load has ended (the launcher's SIGHUP does not wait for it)
UNLOAD = 5  # no payload: stop serving the model (what is queued or running is answered first);
#             answered with Outcome at once
# mule -> worker: REPLY answers INFER
REPLY = 3  # payload: seq, code, batch size, compute ms, the version served now, the outputs'
#            variable sizes, a message

_INFER = struct.Struct("<BIIIdI")
_REPLY = struct.Struct("<BIBIfI")

# reply codes; STALE: the rows were written for a version the mule no longer has (reload)
OK, FAILED, EXPIRED, OVERLOADED, NOT_READY, STALE = range(6)


def pack_infer(slot: int, seq: int, rows: int, deadline: float, *, version: int = 1,
               dims: tuple[int, ...] = ()) -> bytes:
    return _INFER.pack(INFER, slot, seq, rows, deadline, version) + struct.pack(f"<{len(dims)}I", *dims)


def unpack_infer(message: bytes) -> tuple[int, int, int, float, int, tuple[int, ...]]:
    _, slot, seq, rows, deadline, version = _INFER.unpack_from(message)
    dims = struct.unpack_from(f"<{(len(message) - _INFER.size) // 4}I", message, _INFER.size)
    return slot, seq, rows, deadline, version, dims


@dataclass(frozen=True)
class Outcome:
    """The answer to RELOAD or UNLOAD: the version served afterwards (0: none) and what went wrong."""

    kind: int  # RELOAD or UNLOAD
    version: int = 0
    error: str | None = None

    def pack(self) -> bytes:
        return bytes([self.kind]) + json.dumps({"version": self.version, "error": self.error}).encode()

    @classmethod
    def unpack(cls, message: bytes) -> Outcome:
        data = json.loads(message[1:])
        return cls(message[0], data["version"], data["error"])


@dataclass(frozen=True)
class Reply:
    seq: int
    code: int
    batch_size: int = 0
    compute_ms: float = 0.0
    dims: tuple[int, ...] = ()  # the sizes of the outputs' variable dimensions
    message: str = ""
    current: int = 0  # the version the mule serves now (0: none): a worker with another refreshes

    def pack(self) -> bytes:
        head = _REPLY.pack(REPLY, self.seq, self.code, self.batch_size, self.compute_ms, self.current)
        return head + struct.pack(f"<B{len(self.dims)}I", len(self.dims), *self.dims) + self.message.encode()

    @classmethod
    def unpack(cls, message: bytes) -> Reply:
        _, seq, code, batch_size, compute_ms, current = _REPLY.unpack_from(message)
        (count,) = struct.unpack_from("<B", message, _REPLY.size)
        dims = struct.unpack_from(f"<{count}I", message, _REPLY.size + 1)
        text = message[_REPLY.size + 1 + 4 * count :].decode(errors="replace")
        return cls(seq, code, batch_size, compute_ms, dims, text, current)


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def _region_bytes(tensor: TensorSpec, rows: int, string_bytes: int, shape: tuple[int, ...] | None = None) -> int:
    if tensor.is_bytes:  # lengths (uint32), then room for string_bytes bytes per value
        values = rows * math.prod(shape or tensor.shape)
        return _align(values * 4) + _align(values * string_bytes)
    return _align(rows * tensor.row_bytes(string_bytes, shape))


class DoesNotFit(ValueError):
    """A value or a tensor is larger than its room in the slot (MAX_STRING_BYTES, SLOT_MB)."""


@dataclass(frozen=True)
class SlotLayout:
    """Byte offsets inside one slot; both sides derive the same layout from the spec.

    Each input, then each output, has a region. A fixed-shape tensor's region holds `rows` rows;
    the tensors with a variable dimension share what is left of the slot equally, and a request
    sends as many rows as fit its own sizes. A numeric tensor is its raw array; a string tensor
    is a uint32 length per value followed by `string_bytes` bytes per value, so strings of any
    length up to that bound travel without an allocator.
    """

    slot_bytes: int
    rows: int  # most rows one request chunk may carry
    string_bytes: int
    input_offsets: tuple[int, ...]
    output_offsets: tuple[int, ...]
    input_sizes: tuple[int, ...]  # bytes of each region
    output_sizes: tuple[int, ...]

    @classmethod
    def plan(cls, spec: ModelSpec, slot_bytes: int, max_rows: int, string_bytes: int) -> SlotLayout:
        """Fit as many rows as the slot holds (at most max_rows); rows=0 means not even one fits.
        With variable tensors, the fixed ones take at most half the slot."""
        tensors = (*spec.inputs, *spec.outputs)
        fixed = [t for t in tensors if not t.is_variable]
        budget = slot_bytes // 2 if len(fixed) < len(tensors) else slot_bytes

        def size(rows: int) -> int:
            return sum(_region_bytes(t, rows, string_bytes) for t in fixed)

        rows = max_rows
        while rows > 0 and size(rows) > budget:
            rows -= 1
        variable = len(tensors) - len(fixed)
        share = (slot_bytes - size(rows)) // variable // ALIGN * ALIGN if variable else 0
        offsets, sizes, offset = [], [], 0
        for tensor in tensors:
            offsets.append(offset)
            sizes.append(share if tensor.is_variable else _region_bytes(tensor, rows, string_bytes))
            offset += sizes[-1]
        n_in = len(spec.inputs)
        return cls(slot_bytes, rows, string_bytes, tuple(offsets[:n_in]), tuple(offsets[n_in:]),
                   tuple(sizes[:n_in]), tuple(sizes[n_in:]))

    def rows_for(self, spec: ModelSpec, shapes: list[tuple[int, ...]]) -> int:
        """How many rows of these input shapes one chunk may carry (0: not even one fits)."""
        rows = self.rows
        for tensor, shape, room in zip(spec.inputs, shapes, self.input_sizes):
            if tensor.is_variable:
                while rows > 0 and _region_bytes(tensor, rows, self.string_bytes, shape) > room:
                    rows -= 1
        return rows

    def write_inputs(self, shm, slot: int, spec: ModelSpec, arrays: list[np.ndarray]) -> None:
        for tensor, offset, room, array in zip(spec.inputs, self.input_offsets, self.input_sizes, arrays):
            self._write(shm, slot * self.slot_bytes + offset, room, tensor, array)

    def read_inputs(self, shm, slot: int, spec: ModelSpec, rows: int, dims: tuple[int, ...] = ()) -> list[np.ndarray]:
        """Numeric inputs as views of the slot (copy them before the slot is reused)."""
        return [
            self._read(shm, slot * self.slot_bytes + offset, tensor, rows, shape)
            for tensor, offset, shape in zip(spec.inputs, self.input_offsets, spec.input_shapes(dims))
        ]

    def write_outputs(self, shm, slot: int, spec: ModelSpec, arrays: list[np.ndarray]) -> None:
        for tensor, offset, room, array in zip(spec.outputs, self.output_offsets, self.output_sizes, arrays):
            self._write(shm, slot * self.slot_bytes + offset, room, tensor, array)

    def read_outputs(self, shm, slot: int, spec: ModelSpec, rows: int, dims: tuple[int, ...] = ()) -> list[np.ndarray]:
        """Copies: the slot's next request overwrites it."""
        return [
            self._read(shm, slot * self.slot_bytes + offset, tensor, rows, shape).copy()
            for tensor, offset, shape in zip(spec.outputs, self.output_offsets, spec.output_shapes(dims))
        ]

    def _write(self, shm, base: int, room: int, tensor: TensorSpec, array: np.ndarray) -> None:
        rows, shape = len(array), array.shape[1:]
        if _region_bytes(tensor, rows, self.string_bytes, shape) > room:
            raise DoesNotFit(f"{rows} rows of {tensor.name} {list(shape)} do not fit the slot (SLOT_MB)")
        if not tensor.is_bytes:
            np.ndarray(array.shape, dtype=tensor.dtype, buffer=shm, offset=base)[...] = array
            return
        values = array.size
        lengths = np.ndarray((values,), dtype=np.uint32, buffer=shm, offset=base)
        data = np.ndarray((values, self.string_bytes), dtype=np.uint8, buffer=shm, offset=base + _align(values * 4))
        for i, value in enumerate(array.reshape(-1)):
            if len(value) > self.string_bytes:
                raise DoesNotFit(f"a {tensor.name} value has {len(value)} bytes; the limit is {self.string_bytes}"
                                 " (MAX_STRING_BYTES)")
            lengths[i] = len(value)
            data[i, : len(value)] = np.frombuffer(value, dtype=np.uint8)

    def _read(self, shm, base: int, tensor: TensorSpec, rows: int, shape: tuple[int, ...]) -> np.ndarray:
        if not tensor.is_bytes:
            return np.ndarray((rows, *shape), dtype=tensor.dtype, buffer=shm, offset=base)
        values = rows * math.prod(shape)
        lengths = np.ndarray((values,), dtype=np.uint32, buffer=shm, offset=base)
        data = np.ndarray((values, self.string_bytes), dtype=np.uint8, buffer=shm, offset=base + _align(values * 4))
        out = np.empty(values, dtype=object)
        for i in range(values):
            out[i] = data[i, : lengths[i]].tobytes()
        return out.reshape((rows, *shape))


@dataclass(frozen=True)
class MuleStats:
    """The mule's counters, as /stats publishes them."""

    pid: int
    batches: int = 0
    rows: int = 0
    mean_batch_size: float = 0.0
    batch_sizes: dict[str, int] = field(default_factory=dict)  # rows in a batch -> batches run
    mean_compute_ms: float = 0.0
    queued_rows: int = 0
    expired: int = 0
    overloaded: int = 0
    failed: int = 0
    buckets: list[int] = field(default_factory=list)
    batch_limit: int = 0
    batch_cost_ms: dict[str, float] = field(default_factory=dict)  # batch size -> warm-up time
    compiled_buckets: list[int] = field(default_factory=list)  # batch sizes that run compiled with XLA
    model_concurrency: int = 1
    model_concurrency_racing: bool = False  # MODEL_CONCURRENCY=auto is still timing the counts
    batches_in_flight: int = 0
    rows_in_flight: int = 0
    load_seconds: float = 0.0  # loading the model, warm-up included
    warmup_seconds: float = 0.0
    reloads: int = 0  # versions installed after the first
    reload_error: str | None = None  # why the last reload failed (the current version kept serving)
    # what became of each version, newest first, as TF Serving's version status tells it:
    # {"version", "state" (LOADING, AVAILABLE, UNLOADING, END), "error"}
    versions: list[dict] = field(default_factory=list)


@dataclass(frozen=True)
class MuleStatus:
    """The mule's answer to STATUS: its state, and once ready the spec and slot layout workers need."""

    state: str  # "loading", "ready" or "failed"
    stats: MuleStats
    error: str | None = None
    spec: ModelSpec | None = None
    layout: SlotLayout | None = None

    def pack(self) -> bytes:
        return bytes([STATUS]) + json.dumps(dataclasses.asdict(self)).encode()

    @classmethod
    def unpack(cls, message: bytes) -> MuleStatus:
        data = json.loads(message[1:])
        layout = data["layout"] and {
            key: tuple(value) if isinstance(value, list) else value for key, value in data["layout"].items()
        }
        return cls(
            state=data["state"],
            stats=MuleStats(**data["stats"]),
            error=data["error"],
            spec=ModelSpec.from_dict(data["spec"]) if data["spec"] else None,
            layout=SlotLayout(**layout) if layout else None,
        )


_libc = ctypes.CDLL(None, use_errno=True)
_libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)


def release_slots(shm: memoryview, first_slot: int, count: int, slot_bytes: int) -> bool:
    """Hand the pages of slots first_slot.. +count back to the kernel; they read as zeros after.

    uWSGI's master zeroes the whole sharedarea when it creates it, so every slot would stay
    resident (WORKERS x THREADS x SLOT_MB: 128 MB by default) though a request fills only the
    start of its slot (a 224x224 RGB image, 0.6 MB of the 8). A worker releases its own slots
    when it starts, before it takes a request: from then on a slot holds only the pages its
    requests have written. MADV_REMOVE frees the shared pages themselves, for every process that
    maps them. Not possible (another kernel or memory that is not shared): False, and the slots
    simply stay resident."""
    start, length = first_slot * slot_bytes, count * slot_bytes
    if length <= 0 or start + length > len(shm):
        raise ValueError(f"slots {first_slot}..{first_slot + count - 1} lie outside the shared memory")
    address = ctypes.addressof(ctypes.c_char.from_buffer(shm, start))  # valid while the caller holds shm
    failed = _libc.madvise(address, length, mmap.MADV_REMOVE)
    if failed:
        log.warning("could not release %d shared-memory slots (errno %d): they stay resident",
                    count, ctypes.get_errno())
    return not failed
