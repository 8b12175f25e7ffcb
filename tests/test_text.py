"""The text tower in the artifact (issue 29): tokenizer.json ids equal open_clip's, text.onnx equals open_clip's
``encode_text(normalize=True)``, labels at request time equal the built-in zero-shot head."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from clip_debias.runtime.errors import ArtifactError, InputError

pytest.importorskip("tokenizers")

CORPUS = ["a photo of a dog.", "A PHOTO of a Cat!!", "  many   spaces\t\tand\nnewlines  ", "", " ",
          "naïve café résumé", "Привет мир", "日本語のテキスト", "😀🐦 emoji 🏞️ birds 👍🏽",
          "&amp; &lt;b&gt; &amp;amp; &quot;hi&quot; &#39;x&#39; &nbsp;", "it's we're I'LL they've you'd",
          "1234567 3.14 1e10", "x" * 300, "word " * 100, "<start_of_text> hello <end_of_text>", "mojibake: cafÃ©",
          "tab\u00a0nbsp\u2003emsp\u3000ideo", "zero\u200bwidth", "ﬁ ligature ＡＢＣ fullwidth", "İstanbul ΣΟΦΟΣ",
          "a\x1cb\x1fc", "snake_case-and-dashes_", "#hashtag @user http://x.com/a?b=c", "don't stop", "a" * 5000]
LABELS = ["landbird", "waterbird", "a small red boat", "Café au lait"]
TEMPLATES = ["a photo of a {}.", "a blurry photo of the {}.", "{}"]


@pytest.fixture(scope="module", params=["vitb32", "lab"])
def text_artifact(request, tmp_path_factory, vitb32_clip):
    """(LoadedClip, artifact path, runtime.Classifier) of a plain zero-shot classifier exported with its text tower:
    random-weight ViT-B-32 (context 77) and the shipped lab model (context 16). Loaded once (hashing ViT-B-32's
    two graphs is most of a load)."""
    from clip_debias.exporters.onnx_export import export_onnx
    from clip_debias.runtime.classifier import load
    from clip_debias.toolchain.correct.classifier import plain_classifier
    from clip_debias.toolchain.models.loading import load_clip

    clip = vitb32_clip if request.param == "vitb32" else load_clip("clipdebias-lab")
    model = plain_classifier(clip, LABELS, templates=TEMPLATES)
    out = tmp_path_factory.mktemp(f"text-{request.param}") / "art"
    export_onnx(model, out, precision="fp32", ort_optimize=False, text_clip=clip)
    return clip, out, load(out, device="cpu")


def test_token_ids_equal_open_clip(text_artifact):
    clip, _, clf = text_artifact
    ids = clf.tokenize(CORPUS)
    ref = clip.tokenizer(CORPUS).numpy()
    assert ids.dtype == np.int64 and ids.shape == ref.shape
    assert [i for i in range(len(CORPUS)) if not (ids[i] == ref[i]).all()] == []


def test_encode_text_equals_open_clip(text_artifact):
    clip, _, clf = text_artifact
    texts = CORPUS[:12] + LABELS
    got = clf.encode_text(texts)
    ref = clip.encode_text(texts, normalize=True).float().numpy()
    assert got.dtype == np.float32 and got.shape == ref.shape
    assert float(np.abs(got - ref).max()) <= 1e-5
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_labels_at_request_time_equal_the_fixed_head(text_artifact):
    """classify(images, labels=L) with L and the templates the artifact's head was built with: argmax identical,
    probabilities within 1e-5; ensemble=True is the head's text matrix."""
    from clip_debias.toolchain.prompts.text import class_text_matrix

    clip, _, clf = text_artifact
    assert clf.has_text_tower and clf.text.templates == TEMPLATES
    _, h, w = clf.input_shape
    x = np.random.default_rng(0).standard_normal((6, 3, h, w)).astype(np.float32)
    fixed = clf.classify(x)
    open_vocab = clf.classify(x, labels=LABELS)
    assert [p.index for p in fixed] == [p.index for p in open_vocab]
    assert [p.label for p in open_vocab] == [LABELS[p.index] for p in fixed]
    diff = max(float(np.abs(a.probabilities - b.probabilities).max()) for a, b in zip(fixed, open_vocab))
    assert diff <= 1e-5
    t = class_text_matrix(clip, LABELS, TEMPLATES).numpy()
    assert float(np.abs(clf.encode_text(LABELS, ensemble=True) - t).max()) <= 1e-5
    np.testing.assert_array_equal(clf.encode_image(x), clf.embed(x))


def test_text_calls_are_thread_safe(text_artifact):
    clf = text_artifact[2]
    want = clf.encode_text(LABELS)
    got: list[np.ndarray] = []
    threads = [threading.Thread(target=lambda: got.append(clf.encode_text(LABELS))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 4 and all(np.array_equal(g, want) for g in got)


def test_text_input_checks(text_artifact):
    clf = text_artifact[2]
    for bad, what in (("a dog", "one string"), ([], "no texts"), ([3], r"texts\[0\] is int"),
                      (["x" * 10_001], "over the limit")):
        with pytest.raises(InputError, match=what):
            clf.encode_text(bad)
    _, h, w = clf.input_shape
    x = np.zeros((1, 3, h, w), np.float32)
    with pytest.raises(InputError, match="repeats"):
        clf.classify(x, labels=["a", "b", "a"])
    with pytest.raises(InputError, match="blank"):
        clf.classify(x, labels=["a", " "])


def test_old_artifact_without_text_tower(tmp_path):
    """An image-only artifact loads and classifies as before; text calls are one InputError line."""
    from clip_debias.runtime.classifier import load
    from runtime_fixtures import build_artifact

    art = build_artifact(tmp_path / "a")
    clf = load(art.path, device="cpu")
    assert not clf.has_text_tower and clf.manifest.text is None
    x = np.zeros((1, *clf.input_shape), np.float32)
    assert len(clf.classify(x)) == 1
    for call in (lambda: clf.encode_text(["x"]), lambda: clf.tokenize(["x"]), lambda: clf.classify(x, labels=["a"])):
        with pytest.raises(InputError, match="no text tower"):
            call()


def test_fp16_and_int8_text_graphs(tmp_path, tiny_clip):
    """--precision fp32,fp16,int8 writes text.fp16.onnx / text.int8.onnx (gated at export); each loads with the
    image graph of its precision and stays close to fp32."""
    from clip_debias.exporters.onnx_export import export_onnx
    from clip_debias.runtime.classifier import load
    from clip_debias.toolchain.correct.classifier import plain_classifier

    out = export_onnx(plain_classifier(tiny_clip, LABELS), tmp_path / "a", precision="fp32,fp16,int8",
                      ort_optimize=False, text_clip=tiny_clip)
    ref = load(out, device="cpu").encode_text(LABELS)
    for precision, min_cos in (("fp16", 0.999), ("int8", 0.995)):
        clf = load(out, device="cpu", precision=precision)
        assert clf.text.path.name == f"text.{precision}.onnx"
        got = clf.encode_text(LABELS)
        assert float(np.sum(got * ref, axis=1).min()) >= min_cos


def test_manifest_text_record_is_checked(text_artifact):
    import json

    from clip_debias.runtime.manifest import Manifest

    data = json.loads((text_artifact[1] / "manifest.json").read_text())
    assert Manifest.from_dict(data).text == text_artifact[2].manifest.text
    data["text"]["templates"] = ["no placeholder"]
    with pytest.raises(ArtifactError, match="placeholder"):
        Manifest.from_dict(data)
