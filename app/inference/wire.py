"""The worker <-> mule protocol: where tensors sit in shared memory and the tiny messages that wake.

Shared memory holds one fixed slot per worker thread (index from the uWSGI worker id and the
thread), split into an input region (written by the worker) and an output region (written by
the mule). Separate regions make a late write for a dead or timed-out request harmless: it can
only land in an output region, which the slot's next request overwrites before it is answered.

Messages travel over one AF_UNIX SOCK_SEQPACKET connection per worker thread: message
boundaries for free, and a hang-up is seen at once on either side.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass

import numpy as np

from app.inference.spec import ModelSpec

ALIGN = 64

# worker -> mule
INFER = 1  # payload: slot, seq, rows, deadline (CLOCK_MONOTONIC seconds, shared by all processes)
STATUS = 2  # no payload; the mule answers with STATUS + JSON
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


def pack_status(status: dict) -> bytes:
    return bytes([STATUS]) + json.dumps(status).encode()


def unpack_status(message: bytes) -> dict:
    return json.loads(message[1:])


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
