"""``verify``: run an artifact over a labelled dataset split and judge accuracy / robustness / latency gates.

- ``run``: the options (dataclasses), ``prepare`` (everything before the model runs) and ``verify``.
- ``engine``: ``Engine`` (where the model runs), the one ``BatchRunner`` every engine runs its batches through,
  ``LocalEngine`` (this process; ``clip_debias.serving.ray_verify.RayEngine`` is the Ray one).
- ``gates``: ``Thresholds`` (generated from the metric registry) and the judging of every set gate.
- ``timing``: the latency percentiles and the calls they rest on.
- ``report``: ``VerifyReport`` and ``aggregate`` (every number, from any engine's predictions).
"""

from clip_debias.runtime.metrics.evidence import Evidence
from clip_debias.runtime.metrics.spec import ThresholdResult
from clip_debias.runtime.verify.engine import (GATED_AT_VERIFY, BatchRunner, Engine, LocalEngine, Predictions,
                                               check_finite, gate_against_fp32)
from clip_debias.runtime.verify.gates import Thresholds
from clip_debias.runtime.verify.report import VERIFY_REPORT, VerifyReport, aggregate
from clip_debias.runtime.verify.run import (DataOptions, GateOptions, LoadOptions, RunOptions, VerifyJob,
                                            VerifyOptions, prepare, resolve_groups, verify)
from clip_debias.runtime.verify.timing import PERCENTILE_MIN_CALLS, Timing, time_calls

__all__ = [
    "GATED_AT_VERIFY", "PERCENTILE_MIN_CALLS", "VERIFY_REPORT", "BatchRunner", "DataOptions", "Engine", "Evidence",
    "GateOptions", "LoadOptions", "LocalEngine", "Predictions", "RunOptions", "ThresholdResult", "Thresholds",
    "Timing", "VerifyJob", "VerifyOptions", "VerifyReport", "aggregate", "check_finite", "gate_against_fp32",
    "prepare", "resolve_groups", "time_calls", "verify",
]
