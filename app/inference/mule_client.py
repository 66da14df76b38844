"""INFERENCE_MODE=mule, worker side: write rows into this thread's slot, wake the mule, wait.

Workers never import TensorFlow in this mode; they learn the model's spec from the mule's
status answer. Each worker thread owns one slot and one connection, so nothing is locked.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import socket
import struct
import threading
import time

import numpy as np

from app.config import Settings
from app.inference import wire
from app.inference.backend import (
    DeadlineExceeded,
    InferenceFailed,
    LoadFailed,
    NotReady,
    Overloaded,
    Prediction,
    Status,
    TooLarge,
    Unavailable,
)
from app.inference.spec import Batch, ModelSpec

log = logging.getLogger(__name__)

STATUS_TIMEOUT_S = 2.0  # the mule answers between batches; a batch takes well under this


class _Channel:
    """One worker thread's connection to the mule and the last status it learned.

    A request costs two calls that let go of the GIL, send and recv: with 16 threads in a worker,
    each such call is a thread switch when others wait for the GIL, and a wake-up costs ~30 us on
    a 2-core VM. So the wait's timeout is the socket's own (SO_RCVTIMEO, set without letting go
    of the GIL) rather than a poll() before the recv, and a dead mule is found by the send that
    fails rather than by a check before each request."""

    def __init__(self, slot: int):
        self.slot = slot
        self.sock: socket.socket | None = None
        self.seq = 0
        self.status = Status("loading")
        self.spec: ModelSpec | None = None
        self.layout: wire.SlotLayout | None = None
        self.stale = False  # the mule serves another version now: ask STATUS before the next request

    def connect(self, path: str) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            sock.connect(path)
        except OSError:
            sock.close()
            raise
        self.sock = sock

    def receive(self, size: int, until: float) -> bytes:
        """The next message (up to `size` bytes); TimeoutError at `until` (time.monotonic())."""
        while True:
            remaining = until - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            seconds, micros = divmod(max(1, round(remaining * 1e6)), 1_000_000)
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _TIMEVAL.pack(seconds, micros))
            try:
                message = self.sock.recv(size)
            except BlockingIOError:
                continue  # the timeout passed: the loop says so
            if not message:
                raise ConnectionResetError("the mule closed the connection")
            return message

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
        self.sock = None
        self.spec = None
        self.layout = None


_TIMEVAL = struct.Struct("@ll")  # struct timeval: seconds, microseconds


class MuleClient:
    mode = "mule"

    def __init__(self, settings: Settings, shm, first_slot: int):
        """`shm`: the shared memory of all slots; this process owns slots first_slot.. +THREADS."""
        self._settings = settings
        self._shm = shm
        self._first_slot = first_slot
        self._local = threading.local()
        self._next_thread = itertools.count()
        self._lock = threading.Lock()

    @classmethod
    def for_uwsgi_worker(cls, settings: Settings) -> MuleClient:
        import uwsgi  # noqa: PLC0415 - only exists inside uWSGI

        shm, first_slot = uwsgi.sharedarea_memoryview(0), (uwsgi.worker_id() - 1) * settings.threads
        wire.release_slots(shm, first_slot, settings.threads, settings.slot_bytes)
        return cls(settings, shm, first_slot)

    def _channel(self) -> _Channel:
        channel = getattr(self._local, "channel", None)
        if channel is None:
            with self._lock:
                index = next(self._next_thread)
            if index >= self._settings.threads:
                raise RuntimeError(f"more threads than THREADS={self._settings.threads} in one worker")
            channel = self._local.channel = _Channel(self._first_slot + index)
        return channel

    # --- status ---------------------------------------------------------------------------

    def status(self, fresh: bool = False) -> Status:
        """The mule's state; asked again only when not ready, after a reload, or when `fresh` is set
        (a mule that died is found by the next request's send)."""
        channel = self._channel()
        if fresh or channel.spec is None or channel.stale:
            try:
                self._refresh(channel)
            except OSError as exc:
                channel.close()
                return Status("loading", error=None, stats={"mule": f"unreachable: {exc.strerror or exc}"})
        return channel.status

    def _refresh(self, channel: _Channel) -> None:
        if channel.sock is not None:
            try:
                channel.sock.send(bytes([wire.STATUS]))
            except OSError:  # that mule died (uWSGI respawned it): ask the new one
                channel.close()
        if channel.sock is None:
            channel.connect(str(self._settings.mule_socket))
            channel.sock.send(bytes([wire.STATUS]))
        until = time.monotonic() + STATUS_TIMEOUT_S
        while True:
            message = channel.receive(1 << 20, until)
            if message[0] == wire.STATUS:
                break  # replies to earlier, abandoned requests are skipped
        answer = wire.MuleStatus.unpack(message)
        channel.status = Status(answer.state, answer.error, answer.spec, dataclasses.asdict(answer.stats),
                                answer.stats.versions)
        channel.spec, channel.layout, channel.stale = answer.spec, answer.layout, False

    # --- load and unload ------------------------------------------------------------------

    def load(self, deadline: float) -> int:
        outcome = self._control(wire.RELOAD, deadline, "the load goes on after REQUEST_TIMEOUT_MS; the"
                                " model's ready and status routes say when it is done")
        self._channel().stale = True  # learn the spec of what is served now before the next request
        if outcome.error is not None:
            kept = f"; version {outcome.version} keeps serving" if outcome.version else ""
            raise LoadFailed(f"the model failed to load: {outcome.error}{kept}")
        return outcome.version

    def unload(self) -> None:
        self._control(wire.UNLOAD, time.monotonic() + STATUS_TIMEOUT_S, "the model process did not answer")
        self._channel().stale = True

    def _control(self, kind: int, deadline: float, late: str) -> wire.Outcome:
        """RELOAD or UNLOAD, on a connection of its own: an answer that comes after the deadline
        must not meet this thread's next request."""
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as sock:
                sock.connect(str(self._settings.mule_socket))
                sock.send(bytes([kind]))
                while True:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise TimeoutError
                    sock.settimeout(remaining)
                    message = sock.recv(1 << 16)
                    if not message:
                        raise ConnectionResetError("the mule closed the connection")
                    if message[0] == kind:
                        return wire.Outcome.unpack(message)
        except TimeoutError:
            raise DeadlineExceeded(late) from None
        except OSError as exc:
            raise _unreachable(exc) from None

    # --- inference ------------------------------------------------------------------------

    def predict(self, inputs: Batch, deadline: float) -> Prediction:
        channel = self._channel()
        if channel.spec is None:  # the route's readiness check has usually refreshed it already
            status = self.status()
            if not status.ready:
                raise NotReady(status.reason)
        outputs: list[Batch] = []
        batch_sizes, version = [], 0
        spec, total = channel.spec, len(inputs[0])
        step = channel.layout.rows_for(spec, [a.shape[1:] for a in inputs]) if spec.is_variable else channel.layout.rows
        if step == 0:
            raise TooLarge(f"one row of these sizes does not fit a slot of SLOT_MB={self._settings.slot_mb}")
        for start in range(0, total, step):
            chunk = [array[start : start + step] for array in inputs]
            outs, batch_size, version = self._infer_current(channel, chunk, deadline)
            outputs.append(outs)
            batch_sizes.append(batch_size)
        merged = [np.concatenate(parts) if len(parts) > 1 else parts[0] for parts in zip(*outputs)]
        return Prediction(outputs=merged, batch_size=max(batch_sizes), version=version)

    def _infer_current(self, channel: _Channel, chunk: Batch, deadline: float) -> tuple[Batch, int, int]:
        """_infer, again after a reload retired the version the rows were written for, or after
        the mule this thread knew died: the same rows suit the version served now when its inputs
        are the same (else the client retries)."""
        spec = channel.spec
        try:
            return self._infer(channel, chunk, deadline)
        except _Stale:
            pass
        try:
            self._refresh(channel)
        except OSError as exc:
            channel.close()
            raise _unreachable(exc) from None
        if not channel.status.ready:
            raise NotReady(channel.status.reason)
        if channel.spec.inputs != spec.inputs:
            raise NotReady("the model was reloaded with other inputs; send the request again")
        try:
            return self._infer(channel, chunk, deadline)
        except _Stale:
            raise Unavailable("the model changed again during this request; retry shortly") from None

    def _infer(self, channel: _Channel, chunk: Batch, deadline: float) -> tuple[Batch, int, int]:
        """Outputs, the batch size and the version that computed them."""
        spec, layout, rows = channel.spec, channel.layout, len(chunk[0])
        layout.write_inputs(self._shm, channel.slot, spec, chunk)
        channel.seq = (channel.seq + 1) & 0xFFFFFFFF
        seq = channel.seq
        dims = spec.variable_dims(spec.inputs, chunk)
        try:
            channel.sock.send(wire.pack_infer(channel.slot, seq, rows, deadline, version=spec.version, dims=dims))
        except OSError:  # the mule this connection reached died since (uWSGI respawned it): nothing was sent
            channel.close()
            raise _Stale from None
        try:
            while True:
                message = channel.receive(4096, deadline)
                if message[0] != wire.REPLY:
                    continue
                reply = wire.Reply.unpack(message)
                if reply.seq == seq:
                    break  # an older seq is the late answer to a request that already timed out
        except TimeoutError:
            raise DeadlineExceeded("no answer from the model within REQUEST_TIMEOUT_MS") from None
        except OSError as exc:
            # The mule died (it is respawned by uWSGI): fail fast, reconnect on the next request.
            channel.close()
            log.warning("lost the mule mid-request: %s", exc)
            raise Unavailable("the model process restarted; retry shortly") from None
        text = reply.message
        if reply.current and reply.current != spec.version:
            channel.stale = True  # a reload happened: learn the new version before the next request
        if reply.code == wire.STALE:
            raise _Stale
        if reply.code == wire.OK:
            return layout.read_outputs(self._shm, channel.slot, spec, rows, reply.dims), reply.batch_size, spec.version
        if reply.code == wire.EXPIRED:
            raise DeadlineExceeded(text or "deadline passed while queued")
        if reply.code == wire.OVERLOADED:
            raise Overloaded(text or "too many queued requests")
        if reply.code == wire.NOT_READY:
            channel.close()
            raise NotReady(text or "the model is not ready")
        raise InferenceFailed(text or "the model failed on this input")


class _Stale(Exception):
    """The mule no longer has the version these rows were written for, or is another mule."""


def _unreachable(exc: OSError) -> Unavailable:
    """The mule's socket refused or dropped us: it is restarting, so the client retries."""
    return Unavailable(f"the model process could not be reached ({exc}); retry shortly")
