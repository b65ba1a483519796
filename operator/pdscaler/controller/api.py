"""The PDDeployment API (``pdscaler.io/v1alpha1``): pydantic models, the single source of truth.

The CRD's OpenAPI schema (``deploy/crd.yaml``) is generated from these models by
:mod:`pdscaler.controller.crd`: field descriptions become the schema descriptions that
``kubectl explain`` shows, field constraints become schema constraints, and each model's
:attr:`CrdModel.cel_rules` become ``x-kubernetes-validations`` rules that the API server
enforces. The same rules are checked in Python when the operator parses an object, so an
object that slipped past an older CRD is still refused (``SpecValid=False``) before anything is
done with it.

Wire names are camelCase with the unit in the name (``ttftS``, ``tpotMs``, ``windowS``), as in the
profile format; Python names are their snake_case form.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.alias_generators import to_camel

from planner import ModelChoice
from planner.common import ROLES, Role, replica_bounds_problem, validation_message
from planner.models import DEFAULT_ROUTER, DecodeModelName, PrefillModelName, Router

GROUP = "pdscaler.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "PDDeployment"
PLURAL = "pddeployments"
SINGULAR = "pddeployment"
SHORT_NAMES = ("pdd",)
LIST_KIND = "PDDeploymentList"

Mode = Literal["DryRun", "Auto"]

PROM_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
K8S_NAME = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"
K8S_LABEL_KEY = r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
HEADER_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")
FORBIDDEN_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "host"})
MAX_LABELS = 16
MAX_MATCHER_VALUE = 1024
"""Longest Prometheus matcher value (a label value or a regular expression), characters."""
MAX_NODE_LABEL_VALUE = 63
"""Longest Kubernetes label value."""
MAX_HISTORY = 50
_DEFAULT_MODELS = ModelChoice()


@dataclass(frozen=True)
class Rule:
    """A cross-field constraint: its CEL form for the API server, its Python form for us.

    ``check`` receives the validated model instance and returns True when the object is valid.
    """

    cel: str
    message: str
    check: Callable[[Any], bool]


def _add_rules(schema: dict[str, Any], cls: type[BaseModel]) -> None:
    rules: tuple[Rule, ...] = getattr(cls, "cel_rules", ())
    if rules:
        schema["x-kubernetes-validations"] = [
            {"rule": rule.cel, "message": rule.message} for rule in rules
        ]


class CrdModel(BaseModel):
    """Base of the API models: camelCase on the wire, frozen, unknown fields refused."""

    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        alias_generator=to_camel,
        populate_by_name=True,
        allow_inf_nan=False,
        json_schema_extra=_add_rules,
    )
    cel_rules: ClassVar[tuple[Rule, ...]] = ()

    @model_validator(mode="after")
    def _check_rules(self) -> CrdModel:
        for rule in type(self).cel_rules:
            if not rule.check(self):
                raise ValueError(rule.message)
        return self

    def to_wire(self) -> dict[str, Any]:
        """The object as the API server stores it (camelCase, ``None`` fields left out)."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


class StatusModel(CrdModel):
    """Base of the status models: tolerant of fields written by other operator versions."""

    model_config = ConfigDict(extra="ignore", frozen=False)


def _label_map_rule(field: str) -> dict[str, Any]:
    return {
        "default": {},
        "maxProperties": MAX_LABELS,
        "additionalProperties": {"type": "string", "maxLength": MAX_MATCHER_VALUE},
        "x-kubernetes-validations": [
            {
                "rule": "self.all(k, k.matches('^[a-zA-Z_][a-zA-Z0-9_]*$'))",
                "message": f"{field}: every key must be a Prometheus label name "
                "([a-zA-Z_][a-zA-Z0-9_]*)",
            }
        ],
    }


# --------------------------------------------------------------------------- spec


class ScaleTargetRef(CrdModel):
    """The workload whose replicas one role controls, through its /scale subresource."""

    api_version: str = Field(
        default="apps/v1",
        min_length=1,
        max_length=253,
        pattern=r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?v[0-9]+((alpha|beta)[0-9]+)?$",
        description="API group/version of the target, e.g. apps/v1 (Deployment, StatefulSet) "
        "or leaderworkerset.x-k8s.io/v1 (LeaderWorkerSet).",
    )
    kind: str = Field(
        min_length=1,
        max_length=63,
        pattern=r"^[A-Z][A-Za-z0-9]*$",
        description="Kind of the target; it must serve the /scale subresource.",
    )
    name: str = Field(
        min_length=1,
        max_length=253,
        pattern=K8S_NAME,
        description="Name of the target, in the PDDeployment's namespace.",
    )

    def describe(self) -> str:
        return f"{self.kind}/{self.name}"


class ConfigMapProfileRef(CrdModel):
    """A performance profile stored in a ConfigMap of the PDDeployment's namespace."""

    name: str = Field(
        min_length=1, max_length=253, pattern=K8S_NAME, description="Name of the ConfigMap."
    )
    key: str = Field(
        default="profile.yaml",
        min_length=1,
        max_length=253,
        pattern=r"^[-._a-zA-Z0-9]+$",
        description="Key holding the ProfileSet document (YAML or JSON, "
        "docs/profile-format.md).",
    )


class ProfileSource(CrdModel):
    """Where the performance profile comes from: exactly one of configMapRef and inline."""

    config_map_ref: ConfigMapProfileRef | None = Field(
        default=None, description="Read the ProfileSet document from a ConfigMap key."
    )
    inline: dict[str, Any] | None = Field(
        default=None,
        description="The ProfileSet document itself (apiVersion pdscaler.io/v1alpha1, kind "
        "ProfileSet, instances). Validated by the operator; errors set SpecValid=False.",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )

    cel_rules = (
        Rule(
            "has(self.configMapRef) != has(self.inline)",
            "exactly one of configMapRef and inline must be set",
            lambda s: (s.config_map_ref is None) != (s.inline is None),
        ),
    )


class NodePool(CrdModel):
    """The GPU nodes a role's pods run on: their free GPU capacity caps a scale-up."""

    match_labels: dict[str, str] = Field(
        min_length=1,
        max_length=MAX_LABELS,
        description="Node labels selecting the pool (all must match).",
        json_schema_extra={"additionalProperties": {
            "type": "string", "maxLength": MAX_NODE_LABEL_VALUE}},
    )
    gpu_resource_name: str = Field(
        default="nvidia.com/gpu",
        min_length=1,
        max_length=253,
        description="Extended resource counting the GPUs on a node.",
    )

    @field_validator("match_labels")
    @classmethod
    def _keys(cls, value: dict[str, str]) -> dict[str, str]:
        for key, text in value.items():
            if not re.match(K8S_LABEL_KEY, key):
                raise ValueError(f"matchLabels: {key[:100]!r} is not a valid label key")
            if len(text) > MAX_NODE_LABEL_VALUE:
                raise ValueError(f"matchLabels: the value of {key!r} is longer than "
                                 f"{MAX_NODE_LABEL_VALUE} characters")
        return value


class MetricSelector(CrdModel):
    """Prometheus label matchers selecting one role's vLLM series (e.g. its scrape job)."""

    match_labels: dict[str, str] = Field(
        default_factory=dict,
        description="Label equality matchers, e.g. {job: vllm-prefill, namespace: llm}. Values "
        "are escaped; any string is safe.",
        json_schema_extra=_label_map_rule("matchLabels"),
    )
    match_regex: dict[str, str] = Field(
        default_factory=dict,
        description="Label regular-expression matchers (PromQL =~, fully anchored).",
        json_schema_extra=_label_map_rule("matchRegex"),
    )

    cel_rules = (
        Rule(
            "(has(self.matchLabels) && size(self.matchLabels) > 0) || "
            "(has(self.matchRegex) && size(self.matchRegex) > 0)",
            "at least one label matcher (matchLabels or matchRegex) is required",
            lambda s: bool(s.match_labels) or bool(s.match_regex),
        ),
    )

    @field_validator("match_labels", "match_regex")
    @classmethod
    def _label_names(cls, value: dict[str, str]) -> dict[str, str]:
        if len(value) > MAX_LABELS:
            raise ValueError(f"at most {MAX_LABELS} matchers")
        for key, text in value.items():
            if not PROM_LABEL_NAME.match(key):
                raise ValueError(
                    f"{key[:100]!r} is not a Prometheus label name ([a-zA-Z_][a-zA-Z0-9_]*)")
            if len(text) > MAX_MATCHER_VALUE:
                raise ValueError(f"the value of {key!r} is longer than {MAX_MATCHER_VALUE} "
                                 "characters")
        return value


class RoleSpec(CrdModel):
    """One role (prefill or decode) of the disaggregated deployment."""

    scale_target_ref: ScaleTargetRef = Field(
        description="The workload serving this role (Deployment, StatefulSet, LeaderWorkerSet, "
        "anything with a /scale subresource)."
    )
    gpus_per_replica: int = Field(
        ge=1, le=1024, description="GPUs one replica uses (all its pods together)."
    )
    min_replicas: int = Field(default=1, ge=0, le=10_000, description="Fewest replicas.")
    max_replicas: int = Field(
        ge=1, le=10_000, description="Most replicas (at least 1: a role cannot be switched off)."
    )
    profile: ProfileSource | None = Field(
        default=None, description="This role's performance profile; defaults to spec.profile."
    )
    profile_config: str | None = Field(
        default=None,
        min_length=1,
        max_length=253,
        description="Name of the profile's instance configuration this target runs (the "
        "operator scales replicas, it does not change configurations). Required when the "
        "profile has several configurations for the role.",
    )
    node_pool: NodePool | None = Field(
        default=None,
        description="GPU node pool of this role; a scale-up is capped by its free GPUs.",
    )
    metrics: MetricSelector | None = Field(
        default=None,
        description="Prometheus matchers for this role's vLLM series (workload.source "
        "Prometheus).",
    )
    fallback: Fallback | None = Field(
        default=None,
        description="This role's fallback after a long metrics outage (overrides "
        "behavior.fallback).",
    )

    cel_rules = (
        Rule(
            "self.minReplicas <= self.maxReplicas",
            "minReplicas must not be greater than maxReplicas",
            lambda s: replica_bounds_problem(s.min_replicas, s.max_replicas) is None,
        ),
    )


class SLOSpec(CrdModel):
    """Latency targets. Without a percentile, a target applies to the mean."""

    ttft_s: float = Field(gt=0, le=3600, description="Time-to-first-token target, seconds.")
    ttft_percentile: float | None = Field(
        default=None,
        gt=0,
        lt=1,
        description="Percentile of TTFT the target applies to, as a fraction (0.9 for p90).",
    )
    tpot_ms: float = Field(
        gt=0, le=60_000, description="Time-per-output-token target, milliseconds."
    )
    tpot_percentile: float | None = Field(
        default=None,
        gt=0,
        lt=1,
        description="Percentile of TPOT the target applies to, as a fraction (0.9 for p90).",
    )


class PrometheusSource(CrdModel):
    """Read the live workload from the Prometheus that scrapes the vLLM servers."""

    url: str | None = Field(
        default=None,
        max_length=2048,
        pattern=r"^https?://[^\s/]+(/\S*)?$",
        description="Prometheus base URL; defaults to the operator's --prometheus-url setting.",
    )
    window_s: float = Field(
        default=300.0,
        ge=10,
        le=86_400,
        description="Window over which rates, means and distributions are computed, seconds "
        "(at least 4 scrape intervals).",
    )
    max_age_s: float = Field(
        default=120.0,
        ge=5,
        le=3600,
        description="Series whose newest sample is older than this are treated as missing, "
        "seconds.",
    )
    dispersion_sub_window_s: float = Field(
        default=30.0,
        ge=1,
        le=600,
        description="Sub-window of the arrival counts whose variance over mean is the measured "
        "arrival dispersion, seconds. It must be at least the scrape interval (the estimate is "
        "refused otherwise): 30 s works with the common 15 s and 30 s scrapes. Longer "
        "sub-windows also see slower swings and give a larger, more cautious index.",
    )
    headers: dict[str, str] = Field(
        default_factory=dict,
        max_length=8,
        description="Extra HTTP headers for this object's queries (e.g. X-Scope-OrgID for a "
        "Thanos or Mimir tenant), added to the operator's --prometheus-header. Credentials "
        "are not accepted here (Authorization, Cookie): they come from the operator's files.",
        json_schema_extra={"maxProperties": 8, "default": {}},
    )

    @field_validator("headers")
    @classmethod
    def _headers(cls, value: dict[str, str]) -> dict[str, str]:
        for key, text in value.items():
            if not HEADER_NAME.match(key):
                raise ValueError(f"headers: {key!r} is not an HTTP header name")
            if key.lower() in FORBIDDEN_HEADERS:
                raise ValueError(
                    f"headers: {key} is not accepted per object (credentials come from the "
                    "operator's --prometheus-bearer-token-file / --prometheus-basic-auth-file)"
                )
            if "\n" in text or "\r" in text or len(text) > 1024:
                raise ValueError(f"headers: the value of {key} must be one line, <= 1024 chars")
        return value


class LengthSpec(CrdModel):
    """A token-length distribution: a mean, or weighted support points."""

    mean: float | None = Field(default=None, gt=0, le=10_000_000, description="Mean, tokens.")
    values: list[Annotated[float, Field(gt=0)]] | None = Field(
        default=None,
        min_length=1,
        max_length=256,
        description="Support points, tokens (with weights).",
    )
    weights: list[Annotated[float, Field(ge=0)]] | None = Field(
        default=None,
        min_length=1,
        max_length=256,
        description="Probability of each support point; they are normalized to sum to 1.",
    )

    cel_rules = (
        Rule(
            "has(self.mean) != has(self.values)",
            "give either mean or values (with weights)",
            lambda s: (s.mean is None) != (s.values is None),
        ),
        Rule(
            "has(self.values) == has(self.weights)",
            "values and weights go together",
            lambda s: (s.values is None) == (s.weights is None),
        ),
        Rule(
            "!has(self.values) || size(self.values) == size(self.weights)",
            "values and weights must have the same length",
            lambda s: s.values is None or s.weights is None or len(s.values) == len(s.weights),
        ),
    )


class StaticWorkload(CrdModel):
    """A workload given as numbers, for planning ahead of traffic."""

    rate_per_s: float = Field(ge=0, le=1_000_000, description="Arrival rate, requests per second.")
    input_tokens: LengthSpec = Field(description="Prompt lengths, tokens.")
    output_tokens: LengthSpec = Field(description="Generated lengths, tokens.")


class WorkloadSource(CrdModel):
    """Where the planner's workload (arrival rate, length distributions) comes from."""

    source: Literal["Prometheus", "Static"] = Field(
        default="Prometheus",
        description="Prometheus: live vLLM metrics; Static: the numbers in static.",
    )
    prometheus: PrometheusSource = Field(
        default_factory=PrometheusSource, description="Prometheus settings (source Prometheus)."
    )
    static: StaticWorkload | None = Field(
        default=None, description="The workload as numbers (source Static)."
    )

    cel_rules = (
        Rule(
            "!has(self.source) || self.source != 'Static' || has(self.static)",
            "source Static needs workload.static",
            lambda s: s.source != "Static" or s.static is not None,
        ),
    )


class ScalingPolicy(CrdModel):
    """One scaling policy, as in the HorizontalPodAutoscaler v2 API."""

    type: Literal["Pods", "Percent"] = Field(
        description="Pods: at most value replicas; Percent: at most value percent of the "
        "replicas at the start of the period."
    )
    value: int = Field(ge=1, le=100_000, description="Pods or percent per period.")
    period_seconds: int = Field(
        ge=1, le=1800, description="Length of the period the change is counted over, seconds."
    )


class ScalingRules(CrdModel):
    """Scale-up or scale-down rules, as in the HorizontalPodAutoscaler v2 API."""

    stabilization_window_seconds: int | None = Field(
        default=None,
        ge=0,
        le=3600,
        description="Stabilization window, seconds (overrides scaleUpStabilizationS / "
        "scaleDownStabilizationS).",
    )
    policies: list[ScalingPolicy] = Field(
        default_factory=list,
        max_length=10,
        description="Rate policies; none: no rate limit (only maxScaleUpStep/maxScaleDownStep).",
    )
    select_policy: Literal["Max", "Min", "Disabled"] = Field(
        default="Max",
        description="Max: the policy allowing the largest change; Min: the smallest; "
        "Disabled: no scaling in this direction.",
    )


class Fallback(CrdModel):
    """What to do after a long metrics outage (as KEDA's fallback)."""

    failure_threshold: int = Field(
        ge=1, le=10_000,
        description="Consecutive reconciles without trustworthy metrics before the fallback.",
    )
    replicas: int = Field(
        ge=0, le=10_000,
        description="Replicas to raise to (never lowered to: missing data never scales in).",
    )


class Behavior(CrdModel):
    """How fast the replicas follow the recommendation."""

    interval_s: float | None = Field(
        default=None,
        ge=5,
        le=3600,
        description="Seconds between reconciles; defaults to the operator's --interval.",
    )
    scale_up_stabilization_s: float = Field(
        default=0.0,
        ge=0,
        le=3600,
        description="Scale up only to the lowest recommendation of this many past seconds.",
    )
    scale_down_stabilization_s: float = Field(
        default=300.0,
        ge=0,
        le=3600,
        description="Scale down only to the highest recommendation of this many past seconds.",
    )
    max_scale_up_step: int | None = Field(
        default=None, ge=1, le=10_000, description="Most replicas added per role in one change."
    )
    max_scale_down_step: int | None = Field(
        default=None,
        ge=1,
        le=10_000,
        description="Most replicas removed per role in one change.",
    )
    tolerance: float = Field(
        default=0.1,
        ge=0,
        lt=1,
        description="Changes of at most tolerance x current replicas are not made.",
    )
    startup_delay_s: float = Field(
        default=180.0,
        ge=0,
        le=7200,
        description="Seconds from a scale-up to a new replica serving (image, weights, "
        "warm-up): how far ahead planner.forecast looks.",
    )
    scale_up: ScalingRules | None = Field(
        default=None, description="HPA v2 scale-up rules (stabilization window, policies)."
    )
    scale_down: ScalingRules | None = Field(
        default=None, description="HPA v2 scale-down rules (stabilization window, policies)."
    )
    fallback: Fallback | None = Field(
        default=None,
        description="Replicas to raise both roles to after a long metrics outage (a role's "
        "own fallback wins).",
    )


class BudgetSpec(CrdModel):
    """Caps on the whole deployment."""

    max_gpus: int | None = Field(
        default=None, ge=1, le=1_000_000, description="Most GPUs for prefill and decode together."
    )
    max_cost_per_hour: float | None = Field(
        default=None, gt=0, description="Most cost per hour (needs gpuPricesPerHour)."
    )
    gpu_prices_per_hour: dict[str, float] = Field(
        default_factory=dict,
        max_length=64,
        description="Price of one GPU-hour per GPU type of the profile.",
        json_schema_extra={"maxProperties": 64, "default": {}},
    )

    @field_validator("gpu_prices_per_hour")
    @classmethod
    def _prices(cls, value: dict[str, float]) -> dict[str, float]:
        for gpu, price in value.items():
            if price < 0:
                raise ValueError(f"gpuPricesPerHour[{gpu}]={price} must be >= 0")
        return value


class PlannerSpec(CrdModel):
    """Advanced: which latency models the planner uses and the fixed parts of TTFT."""

    prefill_model: PrefillModelName = Field(
        default=_DEFAULT_MODELS.prefill,
        description="TTFT model of the prefill pool (README, planner/models.py).",
    )
    decode_model: DecodeModelName = Field(
        default=_DEFAULT_MODELS.decode,
        description="TPOT model of the decode pool (README, planner/models.py).",
    )
    arrival_dispersion: float | None = Field(
        default=None,
        gt=0,
        le=1000,
        description="Override of the index of dispersion of arrivals (variance over mean of "
        "arrivals per sub-window): 1 for Poisson traffic, above 1 for bursty traffic (used by "
        "the ggc prefill model). Absent: measured from Prometheus (1 when not enough data, or "
        "for a Static workload).",
    )
    online_calibration: bool = Field(
        default=True,
        description="Learn per-role correction factors of the profile (observed over predicted "
        "latency at the current replicas) and size with the corrected profile.",
    )
    forecast: Literal["none", "trend", "seasonal"] = Field(
        default="trend",
        description="Plan for the rate expected when a new replica is ready "
        "(behavior.startupDelayS ahead): none (the current rate), trend (Theil-Sen line of the "
        "recent rates), seasonal (the same time one forecastPeriodS ago, scaled by the level). "
        "Never below the current rate, at most twice it.",
    )
    forecast_period_s: float = Field(
        default=86_400.0,
        ge=600,
        le=604_800,
        description="Period of the seasonal forecast, seconds (a day by default).",
    )
    router: Router = Field(
        default=DEFAULT_ROUTER,
        description="How requests are spread over the instances of each pool. random (default): "
        "what a plain Kubernetes Service gives (kube-proxy picks a backend at random), each "
        "instance its own queue; round-robin: each instance gets every n-th request; "
        "least-loaded: a queue-aware router (llm-d, Dynamo) that pools the instances into one "
        "queue. Declare least-loaded only when such a router is in front: independent queues "
        "wait far longer at the same load.",
    )
    rounding: Literal["ceil", "nearest", "floor"] = Field(
        default="ceil", description="Rounding of fractional replica counts (paper models)."
    )
    ttft_overhead_s: float = Field(
        default=0.0, ge=0, le=60, description="Fixed TTFT overhead (client, router), seconds."
    )
    kv_transfer_fixed_s: float = Field(
        default=0.0, ge=0, le=60, description="Fixed KV-cache transfer time, seconds."
    )
    kv_transfer_s_per_token: float = Field(
        default=0.0, ge=0, le=1, description="KV-cache transfer time per prompt token, seconds."
    )
    include_first_decode_step: bool = Field(
        default=False, description="Count the first decode step in TTFT."
    )
    kv_usage_limit: float = Field(
        default=0.95, gt=0, le=1, description="Fraction of the KV cache the plan may fill."
    )


class PDDeploymentSpec(CrdModel):
    """Desired behaviour of the autoscaler for one prefill/decode deployment."""

    mode: Mode = Field(
        default="DryRun",
        description="DryRun: write recommendations to status only. Auto: also scale the "
        "targets through /scale.",
    )
    slo: SLOSpec = Field(description="Latency targets.")
    profile: ProfileSource | None = Field(
        default=None, description="Performance profile for both roles (unless a role has its own)."
    )
    prefill: RoleSpec = Field(description="The prefill role.")
    decode: RoleSpec = Field(description="The decode role.")
    workload: WorkloadSource = Field(
        default_factory=WorkloadSource,
        description="Where the workload comes from (live Prometheus metrics or static numbers).",
    )
    behavior: Behavior = Field(
        default_factory=Behavior, description="Interval, stabilization, steps and tolerance."
    )
    budget: BudgetSpec | None = Field(default=None, description="GPU and cost caps.")
    planner: PlannerSpec = Field(
        default_factory=PlannerSpec, description="Latency models and TTFT overheads."
    )

    cel_rules = (
        Rule(
            "has(self.profile) || (has(self.prefill.profile) && has(self.decode.profile))",
            "a profile is required: spec.profile or a profile on both roles",
            lambda s: s.profile is not None
            or (s.prefill.profile is not None and s.decode.profile is not None),
        ),
        Rule(
            "self.prefill.scaleTargetRef.kind != self.decode.scaleTargetRef.kind || "
            "self.prefill.scaleTargetRef.name != self.decode.scaleTargetRef.name",
            "prefill and decode must scale different targets",
            lambda s: (s.prefill.scale_target_ref.kind, s.prefill.scale_target_ref.name)
            != (s.decode.scale_target_ref.kind, s.decode.scale_target_ref.name),
        ),
        Rule(
            "(has(self.workload) && has(self.workload.source) && "
            "self.workload.source != 'Prometheus') || "
            "(has(self.prefill.metrics) && has(self.decode.metrics))",
            "workload source Prometheus needs metrics selectors on both roles",
            lambda s: s.workload.source != "Prometheus"
            or (s.prefill.metrics is not None and s.decode.metrics is not None),
        ),
        Rule(
            "!has(self.budget) || !has(self.budget.maxGpus) || self.budget.maxGpus >= "
            "self.prefill.minReplicas * self.prefill.gpusPerReplica + "
            "self.decode.minReplicas * self.decode.gpusPerReplica",
            "budget.maxGpus is below the GPUs of minReplicas of both roles",
            lambda s: s.budget is None
            or s.budget.max_gpus is None
            or s.budget.max_gpus
            >= s.prefill.min_replicas * s.prefill.gpus_per_replica
            + s.decode.min_replicas * s.decode.gpus_per_replica,
        ),
    )

    def role(self, role: Role) -> RoleSpec:
        return self.prefill if role == "prefill" else self.decode

    def profile_for(self, role: Role) -> ProfileSource:
        source = self.role(role).profile or self.profile
        assert source is not None  # guaranteed by the rule above
        return source


# --------------------------------------------------------------------------- status


class Condition(StatusModel):
    """A condition in the standard Kubernetes shape."""

    type: str = Field(description="Ready, SpecValid, MetricsAvailable, TargetsFound, "
                      "CapacityLimited, Paused or Conflict.")
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    reason: str = Field(default="", description="One-word CamelCase reason.")
    message: str = Field(default="", description="Human-readable details.")
    last_transition_time: str | None = Field(
        default=None, description="When the status last changed (RFC 3339)."
    )
    observed_generation: int | None = Field(
        default=None, description="metadata.generation the condition was computed from."
    )


class RecommendationSample(StatusModel):
    """A recommendation and the time it was first made (holds until the next sample)."""

    time: str = Field(description="RFC 3339 time.")
    replicas: int = Field(ge=0, description="Recommended replicas.")


class FactorSampleStatus(StatusModel):
    """One online-calibration sample: the correction factor one window implied."""

    time: str = Field(description="RFC 3339 time.")
    factor: float = Field(description="Implied factor (observed latency over predicted, "
                          "through the model's elasticity).")


class CalibrationStatus(StatusModel):
    """Online calibration of one role's profile: the factor in use and its evidence."""

    state: Literal["off", "learning", "active", "frozen"] = Field(
        default="off",
        description="off (switched off or no observations), learning (too few samples: factor "
        "1), active (factor applied), frozen (no sample this reconcile; the factor is kept).",
    )
    factor: float = Field(
        default=1.0,
        description="Factor applied to the profile: prefill service time (prefill), decode "
        "TPOT (decode).",
    )
    median: float | None = Field(
        default=None, description="Weighted median of the samples before bounds and trust."
    )
    recent_samples: int = Field(default=0, description="Samples younger than one half-life.")
    half_life_s: float | None = Field(default=None, description="Half-life of a sample, s.")
    last_sample_time: str | None = Field(default=None, description="Newest sample (RFC 3339).")
    reason: str = Field(default="", description="Why no sample was taken, or what was learnt.")
    replicas: int | None = Field(
        default=None, description="Replica count the samples are taken at."
    )
    stable_since: str | None = Field(
        default=None,
        description="Since when the count has been unchanged; samples wait for a full window.",
    )
    samples: list[FactorSampleStatus] = Field(
        default_factory=list, max_length=MAX_HISTORY, description="Recent samples."
    )


class RoleStatus(StatusModel):
    """Observed state and recommendation of one role."""

    target: str | None = Field(default=None, description="Kind/name of the scale target.")
    current_replicas: int | None = Field(
        default=None, description="Replicas requested on the target's /scale (spec)."
    )
    ready_replicas: int | None = Field(default=None, description="Replicas ready to serve.")
    planned_replicas: int | None = Field(
        default=None, description="The planner's count for the observed workload."
    )
    recommended_replicas: int | None = Field(
        default=None,
        description="The count to apply after bounds, stabilization, tolerance, steps and "
        "capacity (Auto mode applies it).",
    )
    config: str | None = Field(default=None, description="Profile configuration planned with.")
    gpus_per_replica: int | None = Field(default=None, description="GPUs per replica.")
    feasible: bool | None = Field(
        default=None, description="Whether the planned count meets the role's SLO."
    )
    binding: str | None = Field(
        default=None, description="Constraint that sets the planned count (ttft, tpot, ...)."
    )
    reason: str = Field(default="", description="Why the role is at its recommendation.")
    held_by: str | None = Field(
        default=None, description="Rule that held a change back (stabilization, ...)."
    )
    predicted_ttft_s: float | None = Field(
        default=None, description="Predicted TTFT at the planned count, seconds (prefill)."
    )
    predicted_tpot_ms: float | None = Field(
        default=None, description="Predicted TPOT at the planned count, milliseconds (decode)."
    )
    predicted_ttft_at_current_s: float | None = Field(
        default=None,
        description="Predicted TTFT at the current count, seconds (prefill; compare with "
        "observedTtftS).",
    )
    predicted_tpot_at_current_ms: float | None = Field(
        default=None,
        description="Predicted TPOT at the current count, milliseconds (decode; compare with "
        "observedTpotMs).",
    )
    observed_ttft_s: float | None = Field(
        default=None,
        description="TTFT this role reports at the SLO percentile (or mean), seconds. On "
        "decode it is the KV transfer and first step.",
    )
    observed_tpot_ms: float | None = Field(
        default=None, description="TPOT this role reports at the SLO percentile, milliseconds."
    )
    observed_queue_length: float | None = Field(
        default=None, description="Requests waiting, summed over the role's servers."
    )
    observed_running: float | None = Field(
        default=None, description="Requests running, summed over the role's servers."
    )
    observed_kv_cache_usage: float | None = Field(
        default=None, description="Mean KV-cache usage over the role's servers (0..1)."
    )
    recommendation_history: list[RecommendationSample] = Field(
        default_factory=list,
        max_length=MAX_HISTORY,
        description="Recent recommendations (for the stabilization windows).",
    )
    calibration: CalibrationStatus | None = Field(
        default=None, description="Online calibration of this role's profile."
    )


class ObservedWorkload(StatusModel):
    """The workload the last plan was made for."""

    source: str | None = Field(default=None, description="Prometheus or Static.")
    window_s: float | None = Field(default=None, description="Window of the rates, seconds.")
    rate_per_s: float | None = Field(default=None, description="Arrival rate, requests/s.")
    input_tokens_mean: float | None = Field(default=None, description="Mean prompt length.")
    output_tokens_mean: float | None = Field(default=None, description="Mean output length.")
    input_tokens_p90: float | None = Field(default=None, description="p90 prompt length.")
    output_tokens_p90: float | None = Field(default=None, description="p90 output length.")
    metric_names: dict[str, str] = Field(
        default_factory=dict, description="vLLM series used, per quantity (detected per role)."
    )
    missing: list[str] = Field(
        default_factory=list, max_length=64, description="Series missing, stale or NaN."
    )
    arrival_dispersion: float | None = Field(
        default=None, description="Index of dispersion of arrivals planned with."
    )
    arrival_dispersion_source: Literal["measured", "spec", "default"] | None = Field(
        default=None,
        description="measured (Prometheus), spec (planner.arrivalDispersion) or default (1: "
        "not enough data).",
    )
    arrival_dispersion_reason: str = Field(
        default="", description="How the dispersion was measured, or why it was not."
    )


class RateSampleStatus(StatusModel):
    """An observed arrival rate and when it was observed."""

    time: str = Field(description="RFC 3339 time.")
    rate_per_s: float = Field(description="Arrival rate, requests/s.")


class ForecastStatus(StatusModel):
    """The rate planned for: the forecast at startupDelayS ahead and its history."""

    method: str | None = Field(default=None, description="planner.forecast.")
    used: str | None = Field(
        default=None, description="The predictor that answered (none, trend, seasonal)."
    )
    horizon_s: float | None = Field(
        default=None, description="How far ahead: startup delay plus half the rate window, s."
    )
    forecast_rate_per_s: float | None = Field(
        default=None, description="The predictor's rate at the horizon, requests/s."
    )
    planned_rate_per_s: float | None = Field(
        default=None, description="Rate planned for: max(current, min(forecast, 2 x current))."
    )
    reason: str = Field(default="", description="What the predictor saw.")
    recent: list[RateSampleStatus] = Field(
        default_factory=list, max_length=MAX_HISTORY, description="Recent observed rates."
    )
    history: list[RateSampleStatus] = Field(
        default_factory=list, max_length=128,
        description="Observed rates downsampled over a period (seasonal only).",
    )


class ScaleEvent(StatusModel):
    """A replica change recommended (DryRun) or made (Auto)."""

    time: str = Field(description="RFC 3339 time.")
    role: str = Field(description="prefill or decode.")
    from_replicas: int = Field(description="Replicas before.")
    to_replicas: int = Field(description="Replicas after.")
    applied: bool = Field(description="True when written to /scale (Auto mode).")
    reason: str = Field(default="", description="Why.")


class PDDeploymentStatus(StatusModel):
    """What the operator observed, planned and did."""

    observed_generation: int | None = Field(
        default=None, description="metadata.generation of the last reconciled spec."
    )
    mode: str | None = Field(default=None, description="Mode of the last reconcile.")
    feasible: bool | None = Field(
        default=None, description="Whether the plan meets the SLOs within the limits."
    )
    binding_constraint: str | None = Field(
        default=None, description="The constraint that sets the plan (e.g. prefill.ttft)."
    )
    reason: str = Field(default="", description="The plan's reason in numbers.")
    predicted_ttft_s: float | None = Field(
        default=None, description="Predicted TTFT at the recommendation, seconds."
    )
    predicted_tpot_ms: float | None = Field(
        default=None, description="Predicted TPOT at the recommendation, milliseconds."
    )
    observed: ObservedWorkload = Field(
        default_factory=ObservedWorkload, description="Observed workload inputs."
    )
    prefill: RoleStatus = Field(default_factory=RoleStatus, description="Prefill role.")
    decode: RoleStatus = Field(default_factory=RoleStatus, description="Decode role.")
    conditions: list[Condition] = Field(
        default_factory=list, max_length=16, description="Standard conditions."
    )
    last_scale_time: str | None = Field(
        default=None, description="When a replica change was last made or recommended."
    )
    metric_failures: int | None = Field(
        default=None,
        description="Consecutive reconciles without trustworthy metrics (for the fallback).",
    )
    history: list[ScaleEvent] = Field(
        default_factory=list, max_length=MAX_HISTORY, description="Recent replica changes."
    )
    forecast: ForecastStatus | None = Field(
        default=None, description="The rate forecast planned for (planner.forecast)."
    )

    def role(self, role: Role) -> RoleStatus:
        return self.prefill if role == "prefill" else self.decode


class SpecError(ValueError):
    """A PDDeployment spec is invalid; the message names each field and problem."""


def parse_spec(spec: Any) -> PDDeploymentSpec:
    """Validate a spec as read from the API server; raise :class:`SpecError` when invalid.

    Examples
    --------
    >>> parse_spec({"slo": {"ttftS": 1, "tpotMs": 20}})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    pdscaler.controller.api.SpecError: spec.prefill: Field required; spec.decode: Field required
    """
    try:
        return PDDeploymentSpec.model_validate(spec if spec is not None else {})
    except ValidationError as exc:
        raise SpecError(validation_message(exc, "spec")) from None


def parse_status(status: Any) -> PDDeploymentStatus:
    """The stored status, or an empty one when it is absent or unreadable."""
    if not isinstance(status, dict):
        return PDDeploymentStatus()
    try:
        return PDDeploymentStatus.model_validate(status)
    except ValidationError:
        return PDDeploymentStatus()


__all__ = [
    "API_VERSION",
    "GROUP",
    "KIND",
    "PLURAL",
    "ROLES",
    "VERSION",
    "Behavior",
    "BudgetSpec",
    "CalibrationStatus",
    "Condition",
    "ConfigMapProfileRef",
    "FactorSampleStatus",
    "Fallback",
    "ForecastStatus",
    "LengthSpec",
    "MetricSelector",
    "Mode",
    "NodePool",
    "ObservedWorkload",
    "PDDeploymentSpec",
    "PDDeploymentStatus",
    "PlannerSpec",
    "ProfileSource",
    "PrometheusSource",
    "RateSampleStatus",
    "RecommendationSample",
    "Role",
    "RoleSpec",
    "RoleStatus",
    "SLOSpec",
    "ScaleEvent",
    "ScaleTargetRef",
    "ScalingPolicy",
    "ScalingRules",
    "SpecError",
    "StaticWorkload",
    "WorkloadSource",
    "parse_spec",
    "parse_status",
]
