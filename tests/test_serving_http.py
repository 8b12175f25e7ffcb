"""``serving.http_api``: the /classify request forms, their one-line refusals, and answers equal to the runtime's
``Classifier.classify`` (no web framework, no Ray: runs on the base install)."""

from __future__ import annotations

import base64
import io
import json
import re

import numpy as np
import pytest
from PIL import Image

from clip_debias import runtime
from clip_debias.serving import http_api

from runtime_fixtures import build_artifact


@pytest.fixture(scope="module")
def clf(tmp_path_factory):
    return runtime.load(build_artifact(tmp_path_factory.mktemp("http") / "art", fp16=False).path, device="cpu")


def _png(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (20, 30, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def test_single_image_and_json_batch_answer_like_classify(clf, tmp_path):
    files = [_png(i) for i in range(3)]
    paths = []
    for i, data in enumerate(files):
        paths.append(tmp_path / f"{i}.png")
        paths[-1].write_bytes(data)
    digest = clf.digest
    body = json.dumps({"images": [base64.b64encode(d).decode() for d in files]}).encode()
    for images, expect in ((http_api.request_images(files[0], "image/png"), paths[:1]),
                           (http_api.request_images(body, "application/json; charset=utf-8"), paths)):
        arrays = http_api.preprocess_images(clf, images)
        doc = http_api.classify_response(clf.predict_logits(np.stack(arrays)), clf.class_names, digest)
        assert doc["artifact_digest"] == digest and doc["class_names"] == clf.class_names
        assert doc["predictions"] == [{"label": p.label, "index": p.index,
                                       "probabilities": [float(v) for v in p.probabilities]}
                                      for p in clf.classify(expect)]
    assert json.loads(json.dumps(doc)) == doc  # JSON round trip is exact


@pytest.mark.parametrize("body, content_type, message", [
    (b"", "image/png", "empty request body"),
    (b"{nope", "application/json", "request body is not valid JSON"),
    (b'{"images": []}', "application/json", "field 'images': expected a non-empty list of base64 strings"),
    (b'{"images": [1]}', "application/json", "field 'images': expected a non-empty list of base64 strings"),
    (b'["a"]', "application/json", "field 'images': expected a non-empty list of base64 strings"),
    (b'{"images": ["@@"]}', "application/json", "field 'images[0]': not valid base64"),
    (json.dumps({"images": ["AA=="] * (http_api.MAX_IMAGES + 1)}).encode(), "application/json",
     f"at most {http_api.MAX_IMAGES} per request"),
])
def test_bad_requests(body, content_type, message):
    with pytest.raises(http_api.RequestError, match=re.escape(message)):
        http_api.request_images(body, content_type)


def test_unreadable_image_is_named_by_its_place(clf):
    body = json.dumps({"images": [base64.b64encode(_png(0)).decode(), base64.b64encode(b"junk").decode()]}).encode()
    with pytest.raises(http_api.RequestError, match=r"^request image 1: cannot read image"):
        http_api.preprocess_images(clf, http_api.request_images(body, "application/json"))
    with pytest.raises(http_api.RequestError, match=r"^request image: cannot read image"):
        http_api.preprocess_images(clf, http_api.request_images(b"junk", "image/png"))


def test_oversized_body():
    with pytest.raises(http_api.RequestError, match="request body of 11 bytes is over the limit of 10") as e:
        http_api.request_images(b"x" * 11, "image/png", http_api.RequestLimits(max_body_bytes=10))
    assert e.value.status == 413


@pytest.mark.parametrize("text, depth", [
    (b'{"a": [1, {"b": "x[[[\\"["}]}', 3),  # brackets and an escaped quote inside a string do not count
    (b'["\\\\", [[]]]', 3),  # an escaped backslash ends before the closing quote
    (b'"[[["', 0), (b"[]", 1), (b'{"images": ["AAAA"]}', 2),
])
def test_json_depth_counts_brackets_outside_strings(text, depth):
    assert http_api.json_depth(text, 8) == depth and json.loads(text) is not None


def test_json_limits_before_and_while_parsing():
    with pytest.raises(http_api.RequestError, match="^JSON body nested deeper than 8 levels$"):
        http_api.parse_json(b"[" * 100_000 + b"]" * 100_000)
    with pytest.raises(http_api.RequestError, match="^JSON body: a number of 5001 characters, at most 32$"):
        http_api.parse_json(b"[1" + b"0" * 5000 + b"]")
    with pytest.raises(http_api.RequestError, match="^JSON body: Infinity is not a JSON number$"):
        http_api.parse_json(b"[Infinity]")
    assert http_api.parse_json(b'{"a": [1.5e3, -2, true, null]}') == {"a": [1500.0, -2, True, None]}


def test_texts_labels_and_pixel_budget():
    body = json.dumps({"texts": ["a bird", "a boat"], "ensemble": True}).encode()
    assert http_api.request_texts(body, "application/json") == (["a bird", "a boat"], True)
    with pytest.raises(http_api.RequestError, match="field 'texts': expected a non-empty list of strings"):
        http_api.request_texts(b'{"texts": []}', "application/json")
    doc = {"images": [base64.b64encode(_png(0)).decode()] * 2, "labels": ["a", "b"]}
    req = http_api.parse_image_request(json.dumps(doc).encode(), "application/json", allow_labels=True)
    assert req.labels == ["a", "b"] and len(req.images) == 2
    assert http_api.request_pixels(req.images) == 2 * 20 * 30  # from the headers
    with pytest.raises(http_api.RequestError, match="more than 1,000 pixels together") as e:
        http_api.request_pixels(req.images, http_api.RequestLimits(max_request_pixels=1000))
    assert e.value.status == 413
