"""The worker <-> mule protocol: where tensors sit in shared memory and the tiny messages that wake.

Shared memory holds one fixed slot per worker thread (index from the uWSGI worker id and the
thread), split into an input region (written by the worker) and an output region (written by
the mule). Separate regions make a late write for a dead or timed-out request harmless: it can
only land in an output region, which the slot's next request overwrites before it is answered.

Messages travel over one AF_UNIX SOCK_SEQPACKET connection per worker thread: message
boundaries for free, and a hang-up is seen at once on either side.
"""

from __future__ import annotations

import dataclasses
import json
import struct
from dataclasses import dataclass, field

import numpy as np

from app.inference.spec import ModelSpec

ALIGN = 64

# worker -> mule
INFER = 1  # payload: slot, seq, rows, deadline (CLOCK_MONOTONIC seconds, shared by all processes)
STATUS = 2  # no payload; the mule answers with MuleStatus.pack()
# mule -> worker: REPLY answers INFER
REPLY = 3

_INFER = struct.Struct("<BIIId")
_REPLY = struct.Struct("<BIBIf")

# reply codes
OK, FAILED, EXPIRED, OVERLOADED, NOT_READY = range(5)


def pack_infer(slot: int, seq: int, rows: int, deadline: float) -> bytes:
    return _INFER.pack(INFER, slot, seq, rows, deadline)


def unpack_infer(message: bytes) -> tuple[int, int, int, float]:
    _, slot, seq, rows, deadline = _INFER.unpack(message)
    return slot, seq, rows, deadline


def pack_reply(seq: int, code: int, batch_size: int = 0, compute_ms: float = 0.0, message: str = "") -> bytes:
    return _REPLY.pack(REPLY, seq, code, batch_size, compute_ms) + message.encode()


def unpack_reply(message: bytes) -> tuple[int, int, int, float, str]:
    _, seq, code, batch_size, compute_ms = _REPLY.unpack_from(message)
    return seq, code, batch_size, compute_ms, message[_REPLY.size :].decode(errors="replace")


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


@dataclass(frozen=True)
class SlotLayout:
    """Byte offsets inside one slot; both sides derive the same layout from the spec."""

    slot_bytes: int
    rows: int  # most rows one request chunk may carry
    output_offsets: tuple[int, ...]

    @classmethod
    def plan(cls, spec: ModelSpec, slot_bytes: int, max_rows: int) -> SlotLayout:
        """Fit as many rows as the slot holds (at most max_rows); rows=0 means not even one fits."""

        def size(rows: int) -> int:
            return _align(rows * spec.input.row_bytes) + sum(_align(rows * o.row_bytes) for o in spec.outputs)

        rows = max_rows
        while rows > 0 and size(rows) > slot_bytes:
            rows -= 1
        offsets, offset = [], _align(rows * spec.input.row_bytes)
        for out in spec.outputs:
            offsets.append(offset)
            offset += _align(rows * out.row_bytes)
        return cls(slot_bytes=slot_bytes, rows=rows, output_offsets=tuple(offsets))

    def input_view(self, shm, slot: int, spec: ModelSpec, rows: int) -> np.ndarray:
        shape = (rows, *spec.input.shape)
        return np.ndarray(shape, dtype=spec.input.dtype, buffer=shm, offset=slot * self.slot_bytes)

    def output_views(self, shm, slot: int, spec: ModelSpec, rows: int) -> list[np.ndarray]:
        base = slot * self.slot_bytes
        return [
            np.ndarray((rows, *out.shape), dtype=out.dtype, buffer=shm, offset=base + offset)
            for out, offset in zip(spec.outputs, self.output_offsets)
        ]


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
    model_concurrency: int = 1
    batches_in_flight: int = 0
    rows_in_flight: int = 0
    load_seconds: float = 0.0  # loading the model, warm-up included
    warmup_seconds: float = 0.0


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
        layout = data["layout"] and {**data["layout"], "output_offsets": tuple(data["layout"]["output_offsets"])}
        return cls(
            state=data["state"],
            stats=MuleStats(**data["stats"]),
            error=data["error"],
            spec=ModelSpec.from_dict(data["spec"]) if data["spec"] else None,
            layout=SlotLayout(**layout) if layout else None,
        )
