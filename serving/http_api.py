"""The HTTP contract of ``clip-debias serve`` (no web framework here: bytes in, JSON-able dicts out).

``POST /classify`` and ``POST /embed`` take either

- one image: the body is the image file's bytes (any ``Content-Type`` but JSON, e.g. ``image/png``); or
- a batch: ``Content-Type: application/json`` and ``{"images": ["<base64 of an image file>", ...]}`` (1 to
  ``max_images`` images); ``/classify`` also takes ``"labels": ["a photo of a ...", ...]`` (open vocabulary: needs an
  artifact with a text tower).

``/classify`` answers ``{"artifact_digest": "sha256:...", "class_names": [...], "predictions": [{"label", "index",
"probabilities": [p_0, ..., p_C-1]}, ...]}``, one prediction per image in request order, where ``probabilities =
runtime.softmax(logits)`` of the image (so an answer equals ``Classifier.classify`` on the same image file) and
``index = argmax``. ``/embed`` answers ``{"artifact_digest", "embeddings": [[e_0, ..., e_D-1], ...]}``, each row the
artifact's ``embedding`` output divided by its L2 norm (float32). ``POST /embed-text`` takes ``{"texts": [...],
"ensemble": false}`` and answers ``{"artifact_digest", "embeddings"}`` from ``Classifier.encode_text``.

A bad request is a ``RequestError``: HTTP ``status`` (400; 413 for a body or pixel count over its limit) with
``{"error": "<one line>"}``; the body is never echoed back. JSON is refused (400) before ``json`` builds anything
deeper than ``max_json_depth`` levels, and while parsing for an integer or decimal of more than
``max_number_chars`` characters or a NaN / Infinity constant.
"""

from __future__ import annotations

import base64
import binascii
import io
import ipaddress
import json
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from clip_debias.runtime import load_image, softmax
from clip_debias.runtime.errors import ClipDebiasError, InputError

LOOPBACK = "127.0.0.1"
MAX_IMAGES = 64  # images in one JSON batch
MAX_BODY_BYTES = 32 << 20  # request body
MAX_REQUEST_PIXELS = 100_000_000  # sum of width x height over a request's images, from their headers
MAX_JSON_DEPTH = 8  # nesting of arrays / objects (our documents need 2)
MAX_NUMBER_CHARS = 32  # characters of one JSON number
MAX_TEXTS = 1024  # texts in one /embed-text request, or labels in one /classify request
MAX_TEXT_CHARS = 1000  # characters of one text or label


@dataclass(frozen=True)
class RequestLimits:
    """What one request may hold (``serve --max-...`` options)."""

    max_body_bytes: int = MAX_BODY_BYTES
    max_images: int = MAX_IMAGES
    max_request_pixels: int = MAX_REQUEST_PIXELS
    max_json_depth: int = MAX_JSON_DEPTH
    max_number_chars: int = MAX_NUMBER_CHARS
    max_texts: int = MAX_TEXTS
    max_text_chars: int = MAX_TEXT_CHARS


DEFAULT_LIMITS = RequestLimits()


class RequestError(InputError):
    """A request the server refuses, one line; ``status``: its HTTP status (400, or 413 for too large)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class RequestImage(io.BytesIO):
    """An image file's bytes, named for messages ("request image 2") -- ``runtime.load_image`` reads it like a file
    and names it in its one-line errors."""

    def __init__(self, data: bytes, name: str) -> None:
        super().__init__(data)
        self.label = name

    def __str__(self) -> str:
        return self.label

    __repr__ = __str__


@dataclass
class ImageRequest:
    """The parsed body of ``/classify`` or ``/embed``: its image files (not yet decoded) and, for an
    open-vocabulary ``/classify``, its labels."""

    images: list[RequestImage]
    labels: list[str] | None = None


def is_json(content_type: str | None) -> bool:
    return (content_type or "").split(";")[0].strip().lower() == "application/json"


_JSON_SPECIAL = re.compile(rb'["\\\[\]{}]')


def json_depth(body: bytes, limit: int) -> int:
    """The deepest array / object nesting of a JSON text, stopping with ``RequestError`` once it passes ``limit``.
    Only brackets, quotes and backslashes are visited (``re``), so a body of long base64 strings costs one scan in C;
    a bracket inside a string does not count."""
    depth = deepest = 0
    in_string, escaped_at = False, -1  # escaped_at: the position a backslash in a string escapes
    for m in _JSON_SPECIAL.finditer(body):
        c, at = m.group(), m.start()
        if in_string:
            if at == escaped_at:
                continue
            if c == b"\\":
                escaped_at = at + 1
            elif c == b'"':
                in_string = False
        elif c == b'"':
            in_string = True
        elif c in (b"[", b"{"):
            depth += 1
            if depth > limit:
                raise RequestError(f"JSON body nested deeper than {limit} levels")
            deepest = max(deepest, depth)
        elif c in (b"]", b"}"):
            depth -= 1
    return deepest


def parse_json(body: bytes, limits: RequestLimits = DEFAULT_LIMITS) -> Any:
    """The JSON document of a request body, within ``limits`` (see the module docstring); ``RequestError``
    otherwise."""
    json_depth(body, limits.max_json_depth)

    def number(text: str) -> Any:
        if len(text) > limits.max_number_chars:
            raise RequestError(f"JSON body: a number of {len(text)} characters, at most {limits.max_number_chars}")
        return float(text) if any(c in text for c in ".eE") else int(text)

    def constant(name: str) -> Any:
        raise RequestError(f"JSON body: {name} is not a JSON number")

    try:
        return json.loads(body, parse_int=number, parse_float=number, parse_constant=constant)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RequestError(f"request body is not valid JSON ({type(e).__name__} at position "
                           f"{getattr(e, 'pos', getattr(e, 'start', '?'))})") from None
    except RecursionError:  # not reached below the depth limit; kept so a deep document is never a 500
        raise RequestError(f"JSON body nested deeper than {limits.max_json_depth} levels") from None


def _check_size(body: bytes, limits: RequestLimits) -> None:
    if not body:
        raise RequestError("empty request body: send an image file, or JSON {\"images\": [base64, ...]}")
    if len(body) > limits.max_body_bytes:
        raise RequestError(f"request body of {len(body)} bytes is over the limit of {limits.max_body_bytes}", 413)


def _strings(doc: dict, field: str, limits: RequestLimits, *, allow_empty: bool = False) -> list[str]:
    values = doc.get(field)
    if not isinstance(values, list) or not (values or allow_empty) or not all(isinstance(s, str) for s in values):
        raise RequestError(f"JSON body: field '{field}': expected a non-empty list of strings")
    if len(values) > limits.max_texts:
        raise RequestError(f"JSON body: field '{field}': {len(values)} strings, at most {limits.max_texts} per "
                           "request")
    for i, s in enumerate(values):
        if len(s) > limits.max_text_chars:
            raise RequestError(f"JSON body: field '{field}[{i}]': {len(s)} characters, at most "
                               f"{limits.max_text_chars}")
    return values


def parse_image_request(body: bytes, content_type: str | None, limits: RequestLimits = DEFAULT_LIMITS, *,
                        allow_labels: bool = False) -> ImageRequest:
    """The image files (and labels) of a ``/classify`` or ``/embed`` request (see the module docstring)."""
    _check_size(body, limits)
    if not is_json(content_type):
        return ImageRequest([RequestImage(body, "request image")])
    doc = parse_json(body, limits)
    images = doc.get("images") if isinstance(doc, dict) else None
    if not isinstance(images, list) or not images or not all(isinstance(s, str) for s in images):
        raise RequestError('JSON body: field \'images\': expected a non-empty list of base64 strings')
    if len(images) > limits.max_images:
        raise RequestError(f"JSON body: field 'images': {len(images)} images, at most {limits.max_images} per "
                           "request")
    labels = None
    if allow_labels and "labels" in doc:
        labels = _strings(doc, "labels", limits)
    out = []
    for i, text in enumerate(images):
        try:
            out.append(RequestImage(base64.b64decode(text, validate=True), f"request image {i}"))
        except (binascii.Error, ValueError):
            raise RequestError(f"JSON body: field 'images[{i}]': not valid base64") from None
    return ImageRequest(out, labels)


def request_images(body: bytes, content_type: str | None,
                   limits: RequestLimits = DEFAULT_LIMITS) -> list[RequestImage]:
    """The image files of a ``/classify`` request, not yet decoded."""
    return parse_image_request(body, content_type, limits).images


def request_texts(body: bytes, content_type: str | None,
                  limits: RequestLimits = DEFAULT_LIMITS) -> tuple[list[str], bool]:
    """``(texts, ensemble)`` of a ``/embed-text`` request: JSON ``{"texts": [...], "ensemble": false}``."""
    _check_size(body, limits)
    if not is_json(content_type):
        raise RequestError('POST /embed-text: expected Content-Type application/json and {"texts": [...]}')
    doc = parse_json(body, limits)
    if not isinstance(doc, dict):
        raise RequestError("JSON body: expected an object {\"texts\": [...]}")
    ensemble = doc.get("ensemble", False)
    if not isinstance(ensemble, bool):
        raise RequestError("JSON body: field 'ensemble': expected true or false")
    return _strings(doc, "texts", limits), ensemble


def request_pixels(images: list[RequestImage], limits: RequestLimits = DEFAULT_LIMITS) -> int:
    """Sum of width x height over the images, read from their headers (nothing decoded); ``RequestError`` (413) once
    it passes ``limits.max_request_pixels``. An image whose header PIL cannot read is left for ``preprocess_images``
    to name."""
    total = 0
    for im in images:
        try:
            with Image.open(io.BytesIO(im.getbuffer())) as probe:
                total += probe.width * probe.height
        except Exception:  # noqa: BLE001 -- any unreadable header: preprocess_images refuses it with its reason
            continue
        if total > limits.max_request_pixels:
            raise RequestError(f"request images hold more than {limits.max_request_pixels:,} pixels together "
                               f"(reached {total:,} at {im}); send fewer or smaller images", 413)
    return total


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


def predictions_response(predictions: list[Any], class_names: list[str], digest: str) -> dict[str, Any]:
    """The answer for ``runtime.Prediction`` s (open-vocabulary ``/classify``: ``class_names`` = the labels)."""
    return {
        "artifact_digest": digest,
        "class_names": list(class_names),
        "predictions": [{"label": p.label, "index": int(p.index), "probabilities": [float(v) for v in p.probabilities]}
                        for p in predictions],
    }


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows divided by their L2 norm (float32; a zero row stays zero)."""
    x = np.asarray(x, dtype=np.float32)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norm > 0, norm, 1).astype(np.float32)


def embed_response(embeddings: np.ndarray, digest: str) -> dict[str, Any]:
    """The answer of ``/embed`` (rows made unit-norm here) and ``/embed-text`` (rows as the runtime gives them)."""
    return {"artifact_digest": digest, "embeddings": [[float(v) for v in row] for row in
                                                      np.asarray(embeddings, dtype=np.float32)]}


def check_host(host: str) -> bool:
    """``--host``: an IP address (one ``ClipDebiasError`` line otherwise); True when it is a loopback address."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        raise ClipDebiasError(f"--host {host!r}: expected an IP address such as {LOOPBACK} (the default; any other "
                              "address makes the server reachable from that network)") from None


def error_response(e: Exception) -> dict[str, str]:
    return {"error": " ".join(str(e).split())}
