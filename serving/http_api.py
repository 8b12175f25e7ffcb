"""The HTTP contract of ``clip-debias serve`` (no web framework here: bytes in, JSON-able dicts out).

``POST /classify`` takes either

- one image: the body is the image file's bytes (any ``Content-Type`` but JSON, e.g. ``image/png``); or
- a batch: ``Content-Type: application/json`` and ``{"images": ["<base64 of an image file>", ...]}`` (1 to
  ``MAX_IMAGES`` images);

and answers ``{"artifact_digest": "sha256:...", "class_names": [...], "predictions": [{"label", "index",
"probabilities": [p_0, ..., p_C-1]}, ...]}``, one prediction per image in request order, where ``probabilities =
runtime.softmax(logits)`` of the image (so an answer equals ``Classifier.classify`` on the same image file) and
``index = argmax``. A bad request (empty or oversized body, bad JSON or base64, an image PIL cannot read) is a
``RequestError``: HTTP 400 with ``{"error": "<one line>"}``; the body is never echoed back.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
from typing import Any

import numpy as np

from clip_debias.runtime import load_image, softmax
from clip_debias.runtime.errors import InputError

MAX_IMAGES = 64  # images in one JSON batch
MAX_BODY_BYTES = 32 << 20  # request body


class RequestError(InputError):
    """A request the server refuses (HTTP 400), one line."""


class RequestImage(io.BytesIO):
    """An image file's bytes, named for messages ("request image 2") -- ``runtime.load_image`` reads it like a file
    and names it in its one-line errors."""

    def __init__(self, data: bytes, name: str) -> None:
        super().__init__(data)
        self.label = name

    def __str__(self) -> str:
        return self.label

    __repr__ = __str__


def is_json(content_type: str | None) -> bool:
    return (content_type or "").split(";")[0].strip().lower() == "application/json"


def request_images(body: bytes, content_type: str | None) -> list[RequestImage]:
    """The image files of a ``/classify`` request (see the module docstring), not yet decoded."""
    if not body:
        raise RequestError("empty request body: send an image file, or JSON {\"images\": [base64, ...]}")
    if len(body) > MAX_BODY_BYTES:
        raise RequestError(f"request body of {len(body)} bytes is over the limit of {MAX_BODY_BYTES}")
    if not is_json(content_type):
        return [RequestImage(body, "request image")]
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RequestError(f"request body is not valid JSON ({type(e).__name__} at position "
                           f"{getattr(e, 'pos', getattr(e, 'start', '?'))})") from None
    images = doc.get("images") if isinstance(doc, dict) else None
    if not isinstance(images, list) or not images or not all(isinstance(s, str) for s in images):
        raise RequestError('JSON body: field \'images\': expected a non-empty list of base64 strings')
    if len(images) > MAX_IMAGES:
        raise RequestError(f"JSON body: field 'images': {len(images)} images, at most {MAX_IMAGES} per request")
    out = []
    for i, text in enumerate(images):
        try:
            out.append(RequestImage(base64.b64decode(text, validate=True), f"request image {i}"))
        except (binascii.Error, ValueError):
            raise RequestError(f"JSON body: field 'images[{i}]': not valid base64") from None
    return out


def preprocess_images(clf: Any, images: list[RequestImage]) -> list[np.ndarray]:
    """Decode (``runtime.load_image``: the classifier's pixel limit, 16-bit rules) and preprocess each image
    (``Classifier.preprocess``): float32 [3, H, W]."""
    try:
        return [clf.preprocess(load_image(im, clf.preprocessor.max_pixels)) for im in images]
    except InputError as e:
        raise RequestError(str(e)) from None


def classify_response(logits: np.ndarray, class_names: list[str], digest: str) -> dict[str, Any]:
    """The answer for logits [N, C] (one row per image of the request)."""
    logits = np.asarray(logits, dtype=np.float32)
    probs = softmax(logits)
    return {
        "artifact_digest": digest,
        "class_names": list(class_names),
        "predictions": [{"label": class_names[int(i)], "index": int(i), "probabilities": [float(v) for v in p]}
                        for i, p in zip(probs.argmax(axis=1), probs)],
    }


def error_response(e: Exception) -> dict[str, str]:
    return {"error": " ".join(str(e).split())}
