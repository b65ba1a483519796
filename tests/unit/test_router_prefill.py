r"""The router decides the prefill queue: pooled, random and round-robin, in every prefill model.

Closed forms the predictions are pinned to (computed here, independently of the planner):

* ``random`` with exponential service: Poisson thinning gives :math:`n` independent M/M/1
  queues at :math:`\lambda/n`; the sojourn is exponential with rate :math:`\mu - \lambda/n`:
  mean :math:`1/(\mu - \lambda/n)`, p-quantile :math:`-\ln(1-p)/(\mu - \lambda/n)`.
* ``least-loaded`` with exponential service: one M/M/c queue (Erlang C), with the sojourn
  survival :math:`(1-C)e^{-\mu t} + C(\theta e^{-\mu t} - \mu e^{-\theta t})/(\theta - \mu)`,
  :math:`\theta = c\mu - \lambda`.
* ``round-robin`` with exponential service: each instance is an :math:`E_n/M/1` queue;
  :math:`\sigma` solves :math:`\sigma = (\lambda/(\lambda + \mu(1-\sigma)))^n` (found here by
  fixed-point iteration from 0, which converges monotonically to the root in (0, 1)) and the
  sojourn is exponential with rate :math:`\mu(1-\sigma)`; the mean wait is
  :math:`\sigma/(\mu(1-\sigma))`.
* general service: Pollaczek–Khinchine :math:`\lambda_i E[S^2]/(2(1-\rho))` per instance
  (``random``), Kingman :math:`\frac{\rho}{1-\rho} E[S] \frac{1/n + c_s^2}{2}` (``round-robin``).

The simulator (seeded) is the second, independent reference: with exponential service the
predictions are exact, so the simulated mean sojourn must lie within 4 batch-means standard
errors of the prediction and the share of requests within the predicted p90 within 4 SE of
0.9 (as in ``test_closed_form_vs_sim.py``). With general service (two prompt lengths,
:math:`c_s^2 = 1.94`), Pollaczek–Khinchine is exact for the mean (4 SE); the pooled
Allen–Cunneen and round-robin Kingman means are approximations and must lie within 10 % of
the simulated mean; the exponential-tail p90 of every router must hold between 88 % and 94 %
of the simulated requests (a p90 prediction off by a few points of share at most).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from pdscaler.cli import main
from pdscaler.controller.api import PlannerSpec

from planner import (
    DEFAULT_ROUTER,
    PREFILL_MODELS,
    ROUTERS,
    SLO,
    LengthDistribution,
    ModelChoice,
    PlanRequest,
    TTFTBudget,
    Workload,
    plan,
    predict_at,
    predict_prefill,
)
from planner.models import PrefillModelName, Router
from planner.paper import paper_request
from planner.profile import InstanceProfile, PrefillCurve, PrefillPoint
from planner.simulate import SimConfig, simulate

SERVICE_S = 0.1  # 1000 tokens at 10,000 tokens/s
MU = 1.0 / SERVICE_S
MEAN = SLO(ttft_s=1.0, tpot_ms=1.0)
P90 = SLO(ttft_s=1.0, ttft_percentile=0.9, tpot_ms=1.0)
BATCHES = 20


def _profile(*lengths: int) -> InstanceProfile:
    points = tuple(PrefillPoint(input_tokens=n, max_throughput_tokens_per_s=10_000.0)
                   for n in lengths)
    return InstanceProfile(name="p", role="prefill", gpu_type="x", gpus_per_instance=1,
                           prefill=PrefillCurve(points=points))


EXP = _profile(1000)
# Two prompt lengths: S = 0.05 s (80 %) or 0.4 s (20 %); E[S] = 0.12 s, E[S^2] = 0.034 s^2.
TWO = _profile(500, 4000)
TWO_LENGTHS = LengthDistribution(values=(500.0, 4000.0), weights=(0.8, 0.2))
TWO_MEAN_S, TWO_SECOND_S2 = 0.12, 0.8 * 0.05**2 + 0.2 * 0.4**2


def _constant(rate_per_s: float, dispersion: float = 1.0) -> Workload:
    return Workload.from_means(rate_per_s, 1000, 1).model_copy(
        update={"arrival_dispersion": dispersion})


def _two(rate_per_s: float) -> Workload:
    return Workload(rate_per_s=rate_per_s, input_tokens=TWO_LENGTHS,
                    output_tokens=LengthDistribution.constant(1.0))


def _predict(model: PrefillModelName, router: Router, replicas: int, workload: Workload, slo: SLO,
             instance: InstanceProfile = EXP) -> float:
    return predict_prefill(model, instance, replicas, workload, slo,
                           TTFTBudget(), router=router).ttft_s


def _sigma(n: int, lam: float, mu: float) -> float:
    sigma = 0.0
    for _ in range(100_000):
        new = (lam / (lam + mu * (1.0 - sigma))) ** n
        if abs(new - sigma) < 1e-15:
            return new
        sigma = new
    raise AssertionError("fixed point did not converge")


def _erlang_c(c: int, a: float) -> float:
    top = a**c / math.factorial(c) / (1.0 - a / c)
    return top / (sum(a**k / math.factorial(k) for k in range(c)) + top)


# ----------------------------------------------------------------- closed forms


def test_default_router_is_random_and_every_value_is_accepted() -> None:
    assert DEFAULT_ROUTER == "random"
    assert set(ROUTERS) == {"random", "round-robin", "least-loaded"}
    assert PlanRequest.model_fields["router"].default == "random"


@pytest.mark.parametrize("model", ["paper", "mm1", "mmc"])
def test_random_exponential_is_independent_mm1(model: PrefillModelName) -> None:
    # n = 3, lambda = 18/s, mu = 10/s: each instance at 6/s, mu - lambda/n = 4/s.
    assert _predict(model, "random", 3, _constant(18.0), MEAN) == pytest.approx(0.25, rel=1e-12)
    if model != "paper":  # paper sizes the mean only
        assert _predict(model, "random", 3, _constant(18.0), P90) == pytest.approx(
            math.log(10.0) / 4.0, rel=1e-12)


@pytest.mark.parametrize("model", ["paper", "mm1", "mmc"])
def test_pooled_exponential_is_erlang_c(model: PrefillModelName) -> None:
    c, lam = 3, 18.0
    a = lam / MU
    wait_probability = _erlang_c(c, a)
    assert wait_probability == pytest.approx(0.3548, abs=1e-4)  # tabulated C(3, 1.8)
    theta = c * MU - lam
    mean = wait_probability / theta + SERVICE_S
    pred = predict_prefill(model, EXP, c, _constant(lam), MEAN, TTFTBudget(),
                           router="least-loaded")
    assert pred.ttft_s == pytest.approx(mean, rel=1e-9)
    assert pred.queue_mean_s == pytest.approx(wait_probability / theta, rel=1e-9)
    if model != "paper":
        q = _predict(model, "least-loaded", c, _constant(lam), P90)
        survival = ((1 - wait_probability) * math.exp(-MU * q) + wait_probability
                    * (theta * math.exp(-MU * q) - MU * math.exp(-theta * q)) / (theta - MU))
        assert survival == pytest.approx(0.1, abs=1e-8)


@pytest.mark.parametrize(("n", "rho"), [(2, 0.7), (4, 0.85), (8, 0.5)])
@pytest.mark.parametrize("model", ["paper", "mm1", "mmc"])
def test_round_robin_exponential_is_erlang_n_m_1(
    model: PrefillModelName, n: int, rho: float
) -> None:
    lam = rho * n * MU
    sigma = _sigma(n, lam, MU)
    decay = MU * (1.0 - sigma)
    pred = predict_prefill(model, EXP, n, _constant(lam), MEAN, TTFTBudget(),
                           router="round-robin")
    assert pred.ttft_s == pytest.approx(1.0 / decay, rel=1e-9)
    assert pred.queue_mean_s == pytest.approx(sigma / decay, rel=1e-9)
    if model != "paper":
        p90 = _predict(model, "round-robin", n, _constant(lam), P90)
        assert p90 == pytest.approx(-math.log(0.1) / decay, rel=1e-9)
    # Smoother arrivals than Poisson: E_n/M/1 waits less than M/M/1 at the same load, more than
    # the pooled M/M/c.
    assert sigma < rho
    assert _predict(model, "least-loaded", n, _constant(lam), MEAN) < pred.ttft_s
    assert pred.ttft_s < _predict(model, "random", n, _constant(lam), MEAN)


def test_round_robin_sigma_for_two_instances_by_hand() -> None:
    # n = 2, rho = 0.7: sigma = (1.4 / (2.4 - sigma))^2, whose root in (0, 1) solves the cubic
    # sigma (2.4 - sigma)^2 = 1.96, i.e. sigma^3 - 4.8 sigma^2 + 5.76 sigma - 1.96 = 0.
    roots = np.roots([1.0, -4.8, 5.76, -1.96])
    sigma = min(r.real for r in roots if abs(r.imag) < 1e-12 and 0 < r.real < 1)
    lam = 1.4 * MU
    assert _predict("mm1", "round-robin", 2, _constant(lam), MEAN) == pytest.approx(
        1.0 / (MU * (1.0 - sigma)), rel=1e-9)


@pytest.mark.parametrize(("n", "rho"), [(1000, 0.9999), (50_000, 0.99999)])
def test_round_robin_heavy_traffic_many_instances(n: int, rho: float) -> None:
    # Heavy traffic (Kingman): the E_n/M/1 sojourn tends to an exponential of mean
    # E[S] (c_a^2 + c_s^2) / (2 (1 - rho)) with c_a^2 = 1/n, c_s^2 = 1 (relative error O(1 - rho)).
    lam = rho * n * MU
    mean = _predict("mm1", "round-robin", n, _constant(lam), MEAN)
    assert mean == pytest.approx(SERVICE_S * (1.0 / n + 1.0) / (2.0 * (1.0 - rho)), rel=1e-3)


@pytest.mark.parametrize("model", ["mg1", "mgc"])
def test_general_service_random_is_pollaczek_khinchine(model: PrefillModelName) -> None:
    n, rho = 3, 0.7
    lam = rho * n / TWO_MEAN_S
    lam_i = lam / n
    wait = lam_i * TWO_SECOND_S2 / (2 * (1 - rho))
    pred = predict_prefill(model, TWO, n, _two(lam), MEAN, TTFTBudget(), router="random")
    assert pred.queue_mean_s == pytest.approx(wait, rel=1e-9)
    assert pred.ttft_s == pytest.approx(wait + TWO_MEAN_S, rel=1e-9)


@pytest.mark.parametrize("model", ["mg1", "mgc"])
def test_general_service_round_robin_is_kingman(model: PrefillModelName) -> None:
    n, rho = 4, 0.8
    lam = rho * n / TWO_MEAN_S
    scv = TWO_SECOND_S2 / TWO_MEAN_S**2 - 1.0
    wait = rho / (1 - rho) * TWO_MEAN_S * (1.0 / n + scv) / 2.0
    pred = predict_prefill(model, TWO, n, _two(lam), MEAN, TTFTBudget(),
                           router="round-robin")
    assert pred.queue_mean_s == pytest.approx(wait, rel=1e-9)


def test_ggc_thins_the_burstiness_under_random_and_divides_it_under_round_robin() -> None:
    n, rho, dispersion = 4, 0.6, 9.0
    lam = rho * n / SERVICE_S
    workload = _constant(lam, dispersion)  # constant lengths: c_s^2 = 0
    m1_wait = rho / (1 - rho) * SERVICE_S / 2.0  # M/D/1 (PK with c_s^2 = 0)
    cases: tuple[tuple[Router, float], ...] = (("random", 1 + (dispersion - 1) / n),
                                               ("round-robin", dispersion / n))
    for router, arrival_scv in cases:
        pred = predict_prefill("ggc", EXP, n, workload, MEAN, TTFTBudget(),
                               router=router)
        # Kingman with c_s^2 = 0: W = rho/(1-rho) E[S] c_a^2 / 2, times 1 + rho (batching).
        assert pred.queue_mean_s == pytest.approx(
            m1_wait * arrival_scv * (1 + rho), rel=1e-9), router
    # Pooled: the Allen-Cunneen M/D/c wait C/(c mu - lambda) (0 + 1)/2 times c_a^2 = D.
    pooled = predict_prefill("ggc", EXP, n, workload, MEAN, TTFTBudget(), router="least-loaded")
    md_c_wait = _erlang_c(n, lam * SERVICE_S) / (n * MU - lam) / 2.0
    assert pooled.queue_mean_s == pytest.approx(md_c_wait * dispersion * (1 + rho), rel=1e-9)
    # The textbook models take Poisson arrivals whatever the dispersion.
    for router in ROUTERS:
        for model in ("mg1", "mgc", "mm1"):
            assert _predict(model, router, n, workload, P90) == _predict(
                model, router, n, _constant(lam), P90), (model, router)


@pytest.mark.parametrize(("router", "dispersion", "wait_probability"), [
    ("random", 9.0, 0.3 * 3.0),          # c_a^2 = 1 + 8/4 = 3: P(wait) = rho c_a^2
    ("round-robin", 9.0, 0.3 * 2.25),    # c_a^2 = 9/4
    ("round-robin", 2.0, 0.3),           # c_a^2 = 1/2 < 1: P(wait) stays rho
    ("least-loaded", 9.0, None),         # pooled: D x Erlang C
])
def test_ggc_wait_probability_per_router(
    router: Router, dispersion: float, wait_probability: float | None
) -> None:
    n, rho = 4, 0.3
    lam = rho * n / SERVICE_S
    if wait_probability is None:
        wait_probability = dispersion * _erlang_c(n, lam * SERVICE_S)
    assert 0.1 < wait_probability < 1.0  # the p90 lies in the wait's exponential tail
    pred = predict_prefill("ggc", EXP, n, _constant(lam, dispersion), P90, TTFTBudget(),
                           router=router)
    # Constant own time x = E[S]; wait 0 w.p. 1 - P, else exponential of mean W / P:
    # P(T > t) = P exp(-(t - x) P / W) = 0.1 gives t = x + (W / P) ln(10 P).
    w = pred.queue_mean_s
    expected = SERVICE_S + w / wait_probability * math.log(10.0 * wait_probability)
    assert pred.ttft_s == pytest.approx(expected, rel=1e-6)


def test_routed_burstiness_matches_thinning_and_every_nth_arrival() -> None:
    """The c_a^2 the ggc model uses per router, checked on sampled arrival streams."""
    rng = np.random.default_rng(3)
    n = 4
    # Bursty input: batches of geometric size (mean 5) at Poisson epochs. Index of dispersion
    # of counts in long windows: E[B^2]/E[B] = (2 - p)/p = 9 for p = 0.2.
    epochs = np.cumsum(rng.exponential(1.0, 400_000))
    sizes = rng.geometric(0.2, epochs.size)
    arrivals = np.repeat(epochs, sizes)
    window = 200.0

    def dispersion(times: np.ndarray) -> float:
        counts, _ = np.histogram(times, bins=np.arange(0.0, epochs[-1], window))
        return float(counts.var() / counts.mean())

    assert dispersion(arrivals) == pytest.approx(9.0, rel=0.1)
    thinned = arrivals[rng.integers(0, n, arrivals.size) == 0]
    assert dispersion(thinned) == pytest.approx(1 + 8.0 / n, rel=0.1)
    # A renewal stream with gamma interarrivals of c^2 = 2: every n-th arrival has c^2 = 2/n.
    gaps = rng.gamma(0.5, 2.0, 400_000)
    every_nth = np.diff(np.cumsum(gaps)[::n])
    assert every_nth.var() / every_nth.mean() ** 2 == pytest.approx(2.0 / n, rel=0.05)


@pytest.mark.parametrize("model", PREFILL_MODELS)
def test_every_model_orders_random_above_round_robin_above_pooled(model: PrefillModelName) -> None:
    request = paper_request()
    instance = request.profiles.instances[0]
    workload = request.workload.model_copy(update={"arrival_dispersion": 3.0})
    slo = MEAN if model == "paper" else P90
    ttft = {r: predict_prefill(model, instance, 4, workload, slo, TTFTBudget(),
                               router=r).ttft_s for r in ROUTERS}
    assert ttft["least-loaded"] < ttft["round-robin"] < ttft["random"], ttft


def test_one_instance_is_the_same_queue_for_every_router() -> None:
    workload = _two(0.7 / TWO_MEAN_S)
    for model in PREFILL_MODELS:
        values = {_predict(model, r, 1, workload, P90, TWO) for r in ROUTERS}
        assert max(values) == pytest.approx(min(values), rel=1e-9), model


def test_unknown_router_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="router='nginx'"):
        _predict("mgc", "nginx", 2, _constant(1.0), MEAN)  # type: ignore[arg-type]


# ----------------------------------------------------------------- the optimizer


def test_plan_sizes_more_prefill_for_independent_queues() -> None:
    base = paper_request().model_copy(update={"models": ModelChoice()})
    counts = {r: plan(base.model_copy(update={"router": r})).prefill.replicas for r in ROUTERS}
    assert counts["least-loaded"] <= counts["round-robin"] <= counts["random"]
    assert counts["least-loaded"] < counts["random"]
    # The default request is the random router's, and the reason names the router.
    assert plan(base).prefill.replicas == counts["random"]
    assert "(random router)" in plan(base).prefill.reason
    pooled = plan(base.model_copy(update={"router": "least-loaded"}))
    assert "(least-loaded router)" in pooled.prefill.reason


def test_predict_at_uses_the_requests_router() -> None:
    base = paper_request().model_copy(update={"models": ModelChoice(prefill="mm1")})
    instance = base.profiles.instances[0]
    for router in ROUTERS:
        prefill, _ = predict_at(base.model_copy(update={"router": router}), 4, 4)
        direct = predict_prefill("mm1", instance, 4, base.workload, base.slo, base.ttft_budget,
                                 router=router)
        assert prefill.ttft_s == direct.ttft_s, router
    assert predict_at(base, 4, 4)[0].ttft_s == predict_prefill(
        "mm1", instance, 4, base.workload, base.slo, base.ttft_budget, router="random").ttft_s


def test_crd_default_and_values_are_the_planners() -> None:
    spec = PlannerSpec()
    assert spec.router == DEFAULT_ROUTER
    assert PlannerSpec.model_validate({"router": "round-robin"}).router == "round-robin"
    schema = PlannerSpec.model_json_schema()["properties"]["router"]
    assert schema["default"] == DEFAULT_ROUTER and set(schema["enum"]) == set(ROUTERS)
    assert "plain Kubernetes Service" in schema["description"]


# ----------------------------------------------------------------- the simulator


def _batch_se(values: np.ndarray) -> float:
    means = np.array([b.mean() for b in np.array_split(values, BATCHES)])
    return float(means.std(ddof=1) / math.sqrt(BATCHES))


def _simulated_ttft(instance: InstanceProfile, workload: Workload, replicas: int, router: Router,
                    service: str, seed: int) -> np.ndarray:
    config = SimConfig(prefill=instance, decode=None, prefill_replicas=replicas,
                       prefill_router=router,
                       prefill_token_budget=None, prefill_service=service,
                       num_requests=100_000, warmup_s=1_000 / workload.rate_per_s)
    return simulate(config, workload, seed=seed).ttft


@pytest.mark.parametrize("router", ROUTERS)
def test_simulator_agrees_with_exponential_predictions(router: Router) -> None:
    n, lam = 3, 0.7 * 3 * MU
    ttft = _simulated_ttft(EXP, _constant(lam), n, router, "exponential", seed=21)
    mean = _predict("mm1", router, n, _constant(lam), MEAN)
    se = _batch_se(ttft)
    assert se < 0.03 * mean
    assert abs(ttft.mean() - mean) <= 4 * se, (router, ttft.mean(), mean, se)
    p90 = _predict("mm1", router, n, _constant(lam), P90)
    inside = (ttft <= p90).astype(np.float64)
    assert abs(inside.mean() - 0.9) <= 4 * _batch_se(inside), (router, inside.mean())


@pytest.mark.parametrize("router", ROUTERS)
def test_simulator_agrees_with_general_service_predictions(router: Router) -> None:
    n, rho = 3, 0.7
    workload = _two(rho * n / TWO_MEAN_S)
    ttft = _simulated_ttft(TWO, workload, n, router, "profile", seed=22)
    mean = _predict("mgc", router, n, workload, MEAN, TWO)
    if router == "random":  # Pollaczek-Khinchine: exact
        assert abs(ttft.mean() - mean) <= 4 * _batch_se(ttft), (ttft.mean(), mean)
    else:  # Allen-Cunneen / Kingman: approximations
        assert mean == pytest.approx(ttft.mean(), rel=0.10), router
    p90 = _predict("mgc", router, n, workload, P90, TWO)
    share = float((ttft <= p90).mean())
    assert 0.88 <= share <= 0.94, (router, share)


def test_simulated_routers_rank_as_the_models_do() -> None:
    n, rho = 3, 0.7
    workload = _two(rho * n / TWO_MEAN_S)
    simulated = {r: _simulated_ttft(TWO, workload, n, r, "profile", seed=23).mean()
                 for r in ROUTERS}
    assert simulated["least-loaded"] < simulated["round-robin"] < simulated["random"]
    # Independent queues wait far longer than one pooled queue at the same utilization.
    assert simulated["random"] > 2.0 * simulated["least-loaded"]


# ----------------------------------------------------------------- the command line


def _cli_ttft(capsys: pytest.CaptureFixture[str], *router: str) -> float:
    code = main(["plan", "--rate-per-s", "10", "--input-tokens", "6144", "--output-tokens",
                 "512", "--prefill-min-replicas", "4", "--prefill-max-replicas", "4",
                 "--output", "json", *router])
    out, _ = capsys.readouterr()
    assert code in (0, 3)
    document = json.loads(out)
    plan_doc = document.get("plan", document)
    assert plan_doc["prefill"]["replicas"] == 4
    expected = router[1] if router else DEFAULT_ROUTER
    assert plan_doc["inputs"]["router"] == expected
    return float(plan_doc["prefill"]["predicted"]["ttft_s"])


def test_cli_random_router_predicts_longer_ttft_than_pooled(
    capsys: pytest.CaptureFixture[str],
) -> None:
    random_s = _cli_ttft(capsys, "--router", "random")
    pooled_s = _cli_ttft(capsys, "--router", "least-loaded")
    round_robin_s = _cli_ttft(capsys, "--router", "round-robin")
    assert random_s > round_robin_s > pooled_s
    assert _cli_ttft(capsys) == random_s  # the default is random


def test_cli_simulate_routes_at_random_by_default(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["simulate", "--prefill-replicas", "2", "--decode-replicas", "2", "--requests", "200"]
    assert main(argv) in (0, 3)
    out, _ = capsys.readouterr()
    assert f"routers: prefill {DEFAULT_ROUTER}, decode {DEFAULT_ROUTER}" in out
