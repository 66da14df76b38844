"""The peers' protocols, each a blueprint over the same backend as /predict (one batching mule):
TF Serving / KServe v1 REST (`tfserving`) and the Open Inference Protocol v2 of KServe, Triton
and MLServer (`v2`, with its binary tensor extension in `v2_binary`)."""

from __future__ import annotations

from app.errors import ApiError, render_error


def as_bad_request(err: ApiError):
    """The peers answer a malformed input 400 (TF Serving's INVALID_ARGUMENT, Triton's and KServe's
    400) where /predict says 422; every other status stays."""
    return render_error(400 if err.status == 422 else err.status, err.code, err.message, err.retry_after, err.headers)
