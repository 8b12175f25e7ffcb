"""Artifact integrity: every file checked at load, and one digest that pins the exact artifact (stdlib + manifest).

``verify_artifact(root)`` (``runtime.load`` calls it) hashes, on up to 4 threads:

- every model file ``manifest.json`` lists, against the sha256 the manifest records;
- when the artifact carries the output marker export writes (``runtime.ownership``), every file the marker lists
  -- ``manifest.json`` itself and ``model.plan.json`` included -- against the marker's record.

A mismatch is one ``ArtifactError`` line naming the file. An artifact written before markers existed loads with its
model files checked; its ``manifest.json`` is then covered by the digest only.

**Digest**: ``sha256:`` + the sha256 of the text ``"clip-debias artifact digest v1\\n"`` followed by one line
``PATH\\0SHA256\\n`` per file, in path order, over ``manifest.json``, every file it lists and ``model.plan.json`` when
present (the sha256 of each file as read, not as recorded). Any change to a class name, a normalization constant or
one byte of a model changes it; the marker (which names the command that wrote the folder) is not part of it.
``export`` and ``verify`` print it; ``runtime.load(..., expected_digest=...)`` / ``verify --expect-digest`` refuse
an artifact whose digest differs -- how a CI pins the exact model it tested. Without a pinned digest, the checks
catch corruption and edits that do not also rewrite the records (the manifest / marker are not signed).

Limit: files are hashed, then opened by path: a process that can write the artifact folder in between can swap a
file. Give the serving user read-only access to the artifact.
"""

from __future__ import annotations

import hashlib
import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from clip_debias.runtime.errors import ArtifactError, InputError
from clip_debias.runtime.manifest import MANIFEST_NAME, Manifest
from clip_debias.runtime.ownership import MarkerError, read_marker, sha256_file

DIGEST_PREFIX = "sha256:"
DIGEST_HEADER = b"clip-debias artifact digest v1\n"
SIDECARS = ("model.plan.json",)  # files export writes beside the listed models (TensorRT build record)


def digest_of(file_hashes: dict[str, str]) -> str:
    """The artifact digest of ``{relative path: sha256}`` (see the module docstring)."""
    h = hashlib.sha256(DIGEST_HEADER)
    for path in sorted(file_hashes):
        h.update(f"{path}\0{file_hashes[path]}\n".encode())
    return DIGEST_PREFIX + h.hexdigest()


def parse_digest(text: str, option: str = "expected_digest") -> str:
    """``sha256:<64 hex>`` or ``<64 hex>`` -> ``sha256:<64 hex, lower case>``; anything else one ``InputError``."""
    t = str(text).strip().lower()
    t = t[len(DIGEST_PREFIX):] if t.startswith(DIGEST_PREFIX) else t
    if not re.fullmatch(r"[0-9a-f]{64}", t):
        raise InputError(f"{option} {text!r}: expected sha256:<64 hex digits>, as 'clip-debias export' and "
                         "'clip-debias verify' print it")
    return DIGEST_PREFIX + t


def _hash_all(root: Path, names: list[str], listed: set[str]) -> dict[str, str]:
    def one(name: str) -> str:
        path = root / name
        if not path.is_file():
            raise ArtifactError(f"{path}: listed in {MANIFEST_NAME if name in listed else 'its output marker'} but "
                                "missing")
        return sha256_file(path)

    with ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1, len(names)))) as pool:
        return dict(zip(names, pool.map(one, names)))


def verify_artifact(root: str | Path) -> tuple[Manifest, str]:
    """Check every file of the artifact at ``root`` (see the module docstring); returns the manifest and the
    artifact digest. Raises a one-line ``ArtifactError``."""
    root = Path(root)
    manifest = Manifest.load(root)  # the directory checks and the field errors, named as usual
    data = (root / MANIFEST_NAME).read_bytes()
    try:
        marker = read_marker(root)
    except MarkerError as e:
        raise ArtifactError(f"{e} (refusing to load {root})") from None
    if marker is not None and (marker.kind != "artifact" or marker.files is None):
        raise ArtifactError(f"{root}: its marker says it is {marker.what}, not an artifact")
    recorded = dict(marker.files) if marker is not None else {}  # type: ignore[arg-type]
    listed = {f.path: f.sha256.lower() for f in manifest.files}
    names = sorted(set(listed) | set(recorded) - {MANIFEST_NAME})
    actual = _hash_all(root, names, set(listed))
    actual[MANIFEST_NAME] = hashlib.sha256(data).hexdigest()
    for name, want in [*listed.items(), *recorded.items()]:
        if actual[name] != want:
            source = MANIFEST_NAME if name in listed and listed[name] == want else "its output marker"
            raise ArtifactError(f"{root / name}: sha256 {actual[name][:12]}... does not match {source} "
                                f"({want[:12]}...): file modified or corrupted")
    for side in SIDECARS:
        if side not in actual and (root / side).is_file():
            actual[side] = sha256_file(root / side)
    digested = {n: actual[n] for n in [MANIFEST_NAME, *listed, *(s for s in SIDECARS if s in actual)]}
    return manifest, digest_of(digested)


def check_digest(root: str | Path, digest: str, expected: str) -> None:
    """Refuse (one ``ArtifactError`` line) an artifact whose digest is not the ``expected`` one."""
    want = parse_digest(expected)
    if digest != want:
        raise ArtifactError(f"{root}: artifact digest {digest} differs from the expected {want} (a different or "
                            "modified artifact); refusing to load it")
