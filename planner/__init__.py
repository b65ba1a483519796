"""pdscaler's planner: pure prefill/decode sizing (no network, no Kubernetes, no Prometheus).

Frozen, validated inputs in (:class:`PlanRequest`), a decision with its reason out (:class:`Plan`).
"""

from planner.importers import (
    ProfileFormatError,
    dump_profile_document,
    import_aiconfigurator_csv,
    import_dynamo_npz,
    import_paper_table,
    merge_profile_sets,
    parse_profile_document,
)
from planner.models import (
    DECODE_MODELS,
    PREFILL_MODELS,
    DecodePrediction,
    PrefillPrediction,
    TTFTBudget,
    predict_decode,
    predict_prefill,
)
from planner.optimize import (
    Budget,
    ModelChoice,
    Plan,
    PlanRequest,
    ReplicaBounds,
    RolePlan,
    Rounding,
    plan,
)
from planner.profile import (
    DecodeCurve,
    DecodePoint,
    InstanceProfile,
    PrefillCurve,
    PrefillPoint,
    ProfileSet,
)
from planner.workload import (
    SLO,
    LengthDistribution,
    Trace,
    Workload,
    parse_timestamp_s,
    parse_trace,
    parse_trace_csv,
    parse_trace_jsonl,
)

__all__ = [
    "DECODE_MODELS",
    "PREFILL_MODELS",
    "SLO",
    "Budget",
    "DecodeCurve",
    "DecodePoint",
    "DecodePrediction",
    "InstanceProfile",
    "LengthDistribution",
    "ModelChoice",
    "Plan",
    "PlanRequest",
    "PrefillCurve",
    "PrefillPoint",
    "PrefillPrediction",
    "ProfileFormatError",
    "ProfileSet",
    "ReplicaBounds",
    "RolePlan",
    "Rounding",
    "TTFTBudget",
    "Trace",
    "Workload",
    "dump_profile_document",
    "import_aiconfigurator_csv",
    "import_dynamo_npz",
    "import_paper_table",
    "merge_profile_sets",
    "parse_profile_document",
    "parse_timestamp_s",
    "parse_trace",
    "parse_trace_csv",
    "parse_trace_jsonl",
    "plan",
    "predict_decode",
    "predict_prefill",
]
