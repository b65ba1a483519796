"""Replay policies: HPA rules, Dynamo-style sizing, the paper's models, clairvoyant schedule."""

from __future__ import annotations

import numpy as np
import pytest
from pdscaler.controller.api import PDDeploymentSpec, PDDeploymentStatus, parse_spec
from pdscaler.controller.core import (
    ProfileDocument,
    TargetRead,
    TargetState,
    TickInput,
    WorkloadRead,
    tick,
)
from pdscaler.replay.policies import (
    ClairvoyantPolicy,
    DynamoPolicy,
    HpaPolicy,
    PdscalerPolicy,
    PlannerContext,
    PoolView,
    StaticPolicy,
    oracle_schedule,
    paper_policy,
    static_peak,
)
from pdscaler.vllm_metrics import Observation, RoleMetrics

from planner import SLO, TTFTBudget, Workload
from planner.common import ROLES, Role
from planner.paper import paper_profiles
from planner.profile import InstanceProfile, PrefillCurve, PrefillPoint

PAPER = paper_profiles()
# P_max(1000) = 10,000 prompt tokens/s per replica.
PREFILL = InstanceProfile(
    name="t", role="prefill", gpu_type="x", gpus_per_instance=1,
    prefill=PrefillCurve(points=(PrefillPoint(input_tokens=1000,
                                              max_throughput_tokens_per_s=10_000.0,
                                              zero_load_latency_ms=150.0),)),
)
SLO_MEAN = SLO(ttft_s=2.0, tpot_ms=20.0)


def _obs(prefill: RoleMetrics | None = None, decode: RoleMetrics | None = None,
         workload: Workload | None = None, idle: bool = False) -> Observation:
    return Observation(prefill=prefill or RoleMetrics(), decode=decode or RoleMetrics(),
                       workload=workload, rate_per_s=workload.rate_per_s if workload else None,
                       missing=(), idle=idle)


def _pools(p: int, d: int) -> dict[Role, PoolView]:
    return {"prefill": PoolView(desired=p, ready=p), "decode": PoolView(desired=d, ready=d)}


def _hpa() -> HpaPolicy:
    return HpaPolicy(PlannerContext(PREFILL, PAPER.instances[1], SLO_MEAN),
                     prefill_backlog_target_s=0.5, kv_cache_target=0.7)


def _prefill(waiting: float, pods: int) -> RoleMetrics:
    return RoleMetrics(instances=pods, waiting=waiting, len_sum=1000.0, len_count=1.0)


def test_hpa_prefill_backlog_seconds_per_replica() -> None:
    """30 waiting 1000-token prompts on 2 replicas: 30·1000/10,000 = 3 s of backlog, 1.5 s per
    replica against a 0.5 s target: ratio 3, ceil(3·2) = 6 (within the 2x/+4 limit: 6)."""
    hpa = _hpa()
    out = hpa.decide(0.0, _obs(_prefill(30, 2), RoleMetrics(instances=2, kv_cache=0.7)),
                     _pools(2, 2))
    assert out == {"prefill": 6, "decode": 2}  # decode at its target exactly: unchanged


def test_hpa_tolerance_and_scale_up_limit() -> None:
    hpa = _hpa()
    # 10.5 waiting on 2: 1.05 s of backlog, 0.525 s per replica: ratio 1.05, within 10 %.
    assert hpa.decide(0.0, _obs(_prefill(10.5, 2)), _pools(2, 2))["prefill"] == 2
    # 12 waiting: ratio 1.2, ceil(1.2·2) = 3.
    assert _hpa().decide(0.0, _obs(_prefill(12, 2)), _pools(2, 2))["prefill"] == 3
    # ratio 10 on 2 replicas would be 20; one decision grows at most to max(2·2, 2 + 4) = 6.
    assert _hpa().decide(0.0, _obs(_prefill(100, 2)), _pools(2, 2))["prefill"] == 6
    # decode: KV 0.84 against 0.7 on 5 replicas: ratio 1.2, ceil(6) = 6.
    assert _hpa().decide(0.0, _obs(decode=RoleMetrics(instances=5, kv_cache=0.84)),
                         _pools(1, 5))["decode"] == 6


def test_hpa_scale_down_waits_for_the_stabilization_window() -> None:
    """At 6 replicas from t = 0, an empty queue recommends 1, but the highest recommendation
    of the last 300 s (the initial 6) holds until it leaves the window."""
    hpa = _hpa()
    empty = _obs(_prefill(0, 6), RoleMetrics(instances=2, kv_cache=0.7))
    assert hpa.decide(0.0, empty, _pools(6, 2))["prefill"] == 6
    assert hpa.decide(150.0, empty, _pools(6, 2))["prefill"] == 6
    assert hpa.decide(299.0, empty, _pools(6, 2))["prefill"] == 6
    assert hpa.decide(301.0, empty, _pools(6, 2))["prefill"] == 1
    # Nothing observable (no prefill series): keep the current size.
    assert _hpa().decide(0.0, _obs(), _pools(3, 2)) == {"prefill": 3, "decode": 2}


def test_dynamo_throughput_sizing_on_the_paper_profile() -> None:
    """The paper's example, 12.52 req/s of 6144/512 tokens. Prefill: 12.52·6144/28,309 =
    2.717 → 3. Decode, ITL target 18.8 ms: the largest batch within it is the table's 30 (31
    interpolates to 19.08 ms): 30/0.0188 = 1595.7 tokens/s per replica; 12.52·512/1595.7 =
    4.017 → 5."""
    ctx = PlannerContext(PAPER.instances[0], PAPER.instances[1], SLO(ttft_s=2.0, tpot_ms=18.8))
    w = Workload.from_tokens_per_min(5e6, 6144, 512)
    out = DynamoPolicy(ctx).decide(0.0, _obs(workload=w), _pools(1, 1))
    assert out == {"prefill": 3, "decode": 5}
    assert DynamoPolicy(ctx).decide(0.0, _obs(), _pools(2, 7)) == {"prefill": 2, "decode": 7}
    assert DynamoPolicy(ctx).decide(0.0, _obs(idle=True), _pools(2, 7)) == {
        "prefill": 1, "decode": 1}


def test_paper_policy_gives_the_papers_counts_rounded_up() -> None:
    """The paper's worked example: 3.068 prefill and 3.791 decode instances; ceiling: 4P4D."""
    ctx = PlannerContext(PAPER.instances[0], PAPER.instances[1], SLO_MEAN,
                         ttft_budget=TTFTBudget(overhead_s=0.1))
    w = Workload.from_tokens_per_min(5e6, 6144, 512)
    assert paper_policy(ctx).decide(0.0, _obs(workload=w), _pools(1, 1)) == {
        "prefill": 4, "decode": 4}


def test_clairvoyant_schedule_and_static_peak() -> None:
    policy = ClairvoyantPolicy([(1, 1), (3, 2), (2, 2)], window_s=300.0)
    assert policy.instant
    assert [policy.decide(t, _obs(), _pools(1, 1)) for t in (0.0, 299.0, 300.0, 900.0)] == [
        {"prefill": 1, "decode": 1}, {"prefill": 1, "decode": 1},
        {"prefill": 3, "decode": 2}, {"prefill": 2, "decode": 2}]
    peak = static_peak([(1, 1), (3, 2), (2, 2)])
    assert (peak.prefill, peak.decode) == (3, 2)
    assert isinstance(peak, StaticPolicy)


def test_oracle_schedule_follows_each_windows_traffic() -> None:
    """Window 0: the paper's load (4P4D by the planner's default models is a plan, whatever
    it is); window 1 empty: the minimum; window 2: twice the load needs more of both."""
    ctx = PlannerContext(PAPER.instances[0], PAPER.instances[1], SLO_MEAN)
    rng = np.random.default_rng(0)
    t0 = np.sort(rng.uniform(0, 300, 3756))  # 12.52 req/s
    t2 = np.sort(rng.uniform(600, 900, 7512))
    arrival = np.concatenate([t0, t2])
    schedule = oracle_schedule(ctx, arrival, np.full(arrival.size, 6144.0),
                               np.full(arrival.size, 512.0))
    assert len(schedule) == 3 and schedule[1] == (1, 1)
    assert schedule[2][0] > schedule[0][0] and schedule[2][1] > schedule[0][1]
    direct = ctx.plan(Workload.from_means(3756 / 300, 6144, 512))
    assert schedule[0][0] == direct[0]


def _paper_spec() -> PDDeploymentSpec:
    role = {"gpusPerReplica": 8, "minReplicas": 1, "maxReplicas": 16}
    return parse_spec({
        "mode": "DryRun",
        "slo": {"ttftS": 2.0, "tpotMs": 20},
        "profile": {"inline": PAPER.to_document()},
        "prefill": {**role, "scaleTargetRef": {"kind": "Deployment", "name": "p"},
                    "metrics": {"matchLabels": {"role": "prefill"}}},
        "decode": {**role, "scaleTargetRef": {"kind": "Deployment", "name": "d"},
                   "metrics": {"matchLabels": {"role": "decode"}}},
        "workload": {"source": "Prometheus", "prometheus": {"url": "http://replay"}},
        "planner": {"prefillModel": "paper", "decodeModel": "paper", "rounding": "nearest",
                    "ttftOverheadS": 0.1, "arrivalDispersion": 1.0, "forecast": "none",
                    "onlineCalibration": False},
        "behavior": {"scaleDownStabilizationS": 0, "tolerance": 0, "intervalS": 30},
    })


PAPER_LOAD = Workload.from_means(5e6 / 60 / (6144 + 512), 6144, 512)
PAPER_OBS = _obs(RoleMetrics(instances=1, age_s=5, running=1.0, waiting=0.0,
                             rate_per_s=PAPER_LOAD.rate_per_s),
                 RoleMetrics(instances=1, age_s=5, running=1.0, waiting=0.0),
                 workload=PAPER_LOAD)


def test_pdscaler_policy_runs_the_operators_tick() -> None:
    """The paper's worked example through the operator's own tick: 1P1D -> 3P4D (nearest),
    in Auto whatever the manifest says; the same answer as calling tick() directly."""
    spec = _paper_spec()
    policy = PdscalerPolicy(spec, PAPER.to_document())
    assert policy.decide(120.0, PAPER_OBS, _pools(1, 1)) == {"prefill": 3, "decode": 4}
    direct = tick(TickInput(
        now_s=120.0, namespace="replay", name="pdscaler", generation=1,
        spec=spec.model_copy(update={"mode": "Auto"}), spec_error=None,
        previous=PDDeploymentStatus(),
        profiles={r: ProfileDocument("p", content=PAPER.to_document()) for r in ROLES},
        targets={r: TargetRead(TargetState(1, 1, "0")) for r in ROLES},
        workload=WorkloadRead(observation=PAPER_OBS)))
    assert {c.role: c.to_replicas for c in direct.commands} == {"prefill": 3, "decode": 4}
    # Its status persists: applied history, and no new command at the new counts.
    assert [h.applied for h in policy.status.history] == [True, True]
    assert policy.decide(150.0, PAPER_OBS, _pools(3, 4)) == {"prefill": 3, "decode": 4}
    assert policy.outcomes == {"scaled": 1, "ok": 1}


def test_pdscaler_policy_ticks_every_spec_interval_only() -> None:
    policy = PdscalerPolicy(_paper_spec(), PAPER.to_document())
    policy.decide(120.0, PAPER_OBS, _pools(3, 4))
    # 10 s later (interval 30 s): no tick, the current counts stay whatever the load.
    assert policy.decide(130.0, _obs(), _pools(3, 4)) == {"prefill": 3, "decode": 4}
    assert policy.ticks == 1


def test_pdscaler_policy_holds_on_missing_metrics() -> None:
    policy = PdscalerPolicy(_paper_spec(), PAPER.to_document())
    missing = Observation(prefill=RoleMetrics(), decode=RoleMetrics(), workload=None,
                          rate_per_s=None, missing=("prefill: running (no series)",))
    assert policy.decide(120.0, missing, _pools(5, 6)) == {"prefill": 5, "decode": 6}
    assert policy.outcomes == {"held": 1}


def test_decode_throughput_at_the_itl_target_within_the_kv_cache() -> None:
    """Test profile (TPOT 10/12/16 ms at batch 1/2/4 and context 1000; 20/24/32 ms at 2000),
    prompts 1000 and outputs 200: mean context 1100, TPOT 11, 13.2, 15.4, 17.6 ms at batch
    1..4. Target 20 ms: batch 4 gives 4/0.0176 = 227.27 tokens/s. A 3000-token KV cache
    holds two 1200-token sequences: 2/0.0132 = 151.52 tokens/s."""
    from tests.unit.test_replay_elastic import DECODE

    ctx = PlannerContext(PREFILL, DECODE, SLO(ttft_s=1.0, tpot_ms=20.0))
    assert ctx.decode_throughput_tokens_per_s(1000, 200) == pytest.approx(4 / 0.0176)
    assert DECODE.decode is not None
    small = DECODE.model_copy(update={"decode": DECODE.decode.model_copy(
        update={"kv_cache_capacity_tokens": 3000})})
    small_ctx = PlannerContext(PREFILL, small, SLO(ttft_s=1.0, tpot_ms=20.0))
    assert small_ctx.decode_throughput_tokens_per_s(1000, 200) == pytest.approx(2 / 0.0132)
