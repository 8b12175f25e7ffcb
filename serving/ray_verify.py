"""``clip-debias verify --engine ray``: the verification as a Ray Data pipeline (``[ray]`` extra; no torch).

The driver reads the dataset index (``runtime.datasets``, as local ``verify`` does); Ray Data maps it in batches of
``batch_size`` over a pool of ``actors`` actors (``map_batches`` with a callable class: one ``runtime.load`` per
actor). Each actor runs its batch through local verify's ``runtime.verify.engine.BatchRunner`` (decode and
preprocess, warm the backend up on its first batch, time the backend call alone: latency per actor); it returns each
image's logits and whether it was read. The driver puts the predictions back in dataset order and
``runtime.verify.report.aggregate`` computes every number from them, the same code as for a local run, so the
report is the local one (same JSON schema; accuracies and groups equal) with Ray's part in its ``backend`` entry:
``engine: "ray"``, the address, the actor count and each actor's batches and latency.

The precision gate (bf16) and the backend description come from one Ray task that loads the artifact where the
actors run. On a cluster (``address``) the artifact and the dataset must be readable at the same paths on the driver
and on every node (a shared file system). A local Ray (no address) is started with its addresses on 127.0.0.1.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

import numpy as np

from clip_debias.runtime.errors import ClipDebiasError, InputError
from clip_debias.runtime.limits import DEFAULT_MAX_PIXELS
from clip_debias.runtime.precision_gate import GateResult
from clip_debias.runtime.verify.engine import Predictions

ENGINE = "ray"
LOOPBACK = "127.0.0.1"


def _require_ray() -> Any:
    try:
        import ray
        import ray.data  # noqa: F401
    except ModuleNotFoundError as e:
        if (e.name or "").split(".")[0] not in ("ray", "pyarrow", "pandas"):
            raise
        raise ClipDebiasError("verify --engine ray needs Ray Data: pip install 'clip-debias[ray]'") from None
    return ray


def _user_error(e: BaseException) -> ClipDebiasError | None:
    """The ``ClipDebiasError`` a Ray task or actor raised, found through Ray's wrappers (None: not one of ours)."""
    seen: set[int] = set()
    stack: list[Any] = [e]
    while stack:
        x = stack.pop()
        if x is None or id(x) in seen:
            continue
        seen.add(id(x))
        if isinstance(x, ClipDebiasError) and not type(x).__module__.startswith("ray"):
            return x  # Ray's wrapper class of a task's error also is one: its ``cause`` is the original
        stack += [getattr(x, "cause", None), x.__cause__, x.__context__]
    return None


def _probe(artifact: str, load_args: dict[str, Any]) -> dict[str, Any]:
    """Run as a Ray task: load the artifact where the actors run (its checks and ``expected_digest`` there); the
    backend description, class and group names, digest and precision gate."""
    from clip_debias.runtime.classifier import load
    from clip_debias.runtime.verify.engine import LocalEngine

    clf = load(artifact, **load_args)
    return {"info": clf.info(), "class_names": clf.class_names, "group_names": clf.group_names,
            "digest": clf.digest, "gate": LocalEngine(clf).precision_gate(), "transductive": clf.manifest.transductive}


class VerifyActor:
    """One actor of the pool: one ``runtime.load``; ``__call__`` classifies a batch of the dataset index through the
    ``BatchRunner`` local verify uses (an error is returned as data: Ray would wrap a raised one past recognition)."""

    def __init__(self, artifact: str, load_args: dict[str, Any], warmup: int, skip_bad: bool) -> None:
        from clip_debias.runtime.classifier import load
        from clip_debias.runtime.verify.engine import BatchRunner

        self.runner = BatchRunner(load(artifact, **load_args), warmup, skip_bad)
        self.batches = 0
        self.name = f"{socket.gethostname()}:{os.getpid()}"

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(batch["i"])
        paths = [str(p) for p in batch["path"]]
        try:
            result = self.runner.run([self.runner.decode(p) for p in paths], paths)
        except InputError as e:
            return {"i": batch["i"], "logits": np.zeros((n, len(self.runner.clf.class_names)), dtype=np.float32),
                    "kept": np.zeros(n, dtype=bool), "actor": np.array([self.name] * n), "batch": np.full(n, 0),
                    "latency_ms": np.full(n, np.nan), "error": np.array([str(e)] * n)}
        self.batches += 1
        latency = np.nan if result.ms is None else result.ms
        return {"i": batch["i"], "logits": result.logits, "kept": result.kept, "actor": np.array([self.name] * n),
                "batch": np.full(n, self.batches), "latency_ms": np.full(n, latency), "error": np.array([""] * n)}


def _per_actor(actors: np.ndarray, batch_ids: np.ndarray, latencies: np.ndarray, kept: np.ndarray
               ) -> tuple[list[float], list[int], dict[str, dict[str, float]]]:
    """(every batch's model time, the images of each of those batches, {actor: batches, images, p50_ms, p95_ms,
    mean_ms}) from the per-image rows."""
    all_ms: list[float] = []
    all_images: list[int] = []
    stats: dict[str, dict[str, float]] = {}
    for actor in sorted(set(actors.tolist())):
        mine = actors == actor
        firsts: dict[int, float] = {}
        images: dict[int, int] = {}
        for b, ms, ok in zip(batch_ids[mine].tolist(), latencies[mine].tolist(), kept[mine].tolist()):
            firsts.setdefault(b, ms)
            images[b] = images.get(b, 0) + int(ok)
        timed = [b for b, v in firsts.items() if not np.isnan(v)]
        ms = [firsts[b] for b in timed]
        all_ms += ms
        all_images += [images[b] for b in timed]
        stats[actor] = {"batches": len(firsts), "images": int(kept[mine].sum()),
                        **({"p50_ms": float(np.percentile(ms, 50)), "p95_ms": float(np.percentile(ms, 95)),
                            "mean_ms": float(np.mean(ms))} if ms else {})}
    return all_ms, all_images, stats


class RayEngine:
    """A ``runtime.verify.Engine`` on Ray (see the module docstring). Use as a context manager: a Ray it started is
    shut down at the end; one that was running (or a cluster at ``address``) is left as it was."""

    def __init__(self, artifact: str | Path, backend: str = "auto", device: str = "cpu", precision: str = "fp32",
                 *, actors: int = 2, cpus_per_actor: float = 1.0, warmup: int = 2, address: str | None = None,
                 num_cpus: int | None = None, progress: bool = False, expected_digest: str | None = None,
                 max_pixels: int | None = DEFAULT_MAX_PIXELS) -> None:
        if actors < 1:
            raise ClipDebiasError(f"--ray-actors {actors}: expected >= 1")
        self.ray = _require_ray()
        self.root, self.backend, self.device, self.precision = Path(artifact), backend, device, precision
        self.actors, self.cpus_per_actor, self.warmup, self.address = actors, cpus_per_actor, warmup, address
        self.num_cpus, self.progress = num_cpus, progress
        self.load_args: dict[str, Any] = {"backend": backend, "device": device, "precision": precision,
                                          "expected_digest": expected_digest, "max_image_pixels": max_pixels}
        self.started = False
        self._info: dict[str, Any] = {}
        self._gate: GateResult | None = None
        self.class_names: list[str] = []
        self.group_names: list[str] = []
        self.digest: str | None = None
        self.transductive = False
        self.per_actor: dict[str, dict[str, float]] = {}

    def __enter__(self) -> "RayEngine":
        ray = self.ray
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"log_to_driver": False, "configure_logging": False}
            if self.address:
                kwargs["address"] = self.address
            else:
                kwargs.update(num_cpus=self.num_cpus, include_dashboard=False, _node_ip_address=LOOPBACK)
            try:
                ray.init(**kwargs)
            except ConnectionError as e:
                raise ClipDebiasError(f"--address {self.address}: cannot connect to a Ray cluster ({e})") from None
            self.started = True
        if not self.progress:
            ray.data.DataContext.get_current().enable_progress_bars = False
            logging.getLogger("ray.data").setLevel(logging.WARNING)
        probe = ray.remote(_probe).options(num_cpus=self.cpus_per_actor, num_gpus=self._gpus, max_retries=0)
        try:
            found = ray.get(probe.remote(str(self.root), self.load_args))
        except Exception as e:  # noqa: BLE001 (Ray wraps the task's error)
            if self.started:
                ray.shutdown()
            raise _user_error(e) or e from None
        self._info, self._gate, self.digest = found["info"], found["gate"], found["digest"]
        self.class_names, self.group_names = found["class_names"], found["group_names"]
        self.transductive = bool(found["transductive"])
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.started:
            self.ray.shutdown()

    @property
    def _gpus(self) -> float:
        return 1.0 if self.device == "cuda" else 0.0

    def info(self) -> dict[str, Any]:
        return {**self._info, "engine": ENGINE, "ray": {"address": self.address or "local", "actors": self.actors,
                                                        "per_actor": self.per_actor}}

    def precision_gate(self) -> GateResult | None:
        return self._gate

    def predict(self, records: list[Any], batch_size: int, skip_bad: bool, what: str) -> Predictions:
        ray = self.ray
        t0 = time.perf_counter()
        threads = max(1, int(self.cpus_per_actor)) if self.device == "cpu" else None
        items = [{"i": i, "path": str(r.path)} for i, r in enumerate(records)]
        ds = ray.data.from_items(items, override_num_blocks=max(1, min(len(items) // batch_size, 4 * self.actors)))
        ds = ds.map_batches(
            VerifyActor, batch_size=batch_size, batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=self.actors), num_cpus=self.cpus_per_actor, num_gpus=self._gpus,
            fn_constructor_kwargs={"artifact": str(self.root), "warmup": self.warmup, "skip_bad": skip_bad,
                                   "load_args": {**self.load_args, "intra_op_threads": threads}})
        cols: dict[str, list[np.ndarray]] = {k: [] for k in ("i", "logits", "kept", "actor", "batch", "latency_ms")}
        try:
            for b in ds.iter_batches(batch_size=None, batch_format="numpy"):
                failed = [m for m in np.asarray(b["error"]).tolist() if m]
                if failed:  # an unreadable image without skip_bad: stop, named as local verify names it
                    raise InputError(failed[0])
                for k in cols:
                    cols[k].append(np.asarray(b[k]))
        except InputError:
            raise
        except Exception as e:  # noqa: BLE001 (Ray Data wraps the actor's error)
            raise _user_error(e) or e from None
        i, rows, ok, actor, batch_id, latency = (np.concatenate(cols[k]) for k in cols)
        if sorted(i.tolist()) != list(range(len(records))):
            raise RuntimeError(f"Ray Data returned {len(i)} rows for {len(records)} images")  # never expected
        logits = np.zeros((len(records), rows.shape[1]), dtype=np.float32)
        kept = np.ones(len(records), dtype=bool)
        logits[i], kept[i] = rows, ok.astype(bool)
        latencies, images, self.per_actor = _per_actor(actor, batch_id, latency, ok.astype(bool))
        return Predictions(logits, kept, latencies, time.perf_counter() - t0, images)
