"""The vLLM simulator as a test component: subprocesses of ``pdscaler vllm-sim`` on loopback.

Use the ``vllm_sim`` factory fixture::

    def test_x(vllm_sim):
        sim = vllm_sim(profile="paper", role="both", time_scale=0.1)
        requests.post(sim.base_url + "/v1/completions", ...)

or :func:`start_vllm_sim` from scripts. Every instance is stopped at the end of the test.
"""

from __future__ import annotations

import json
import sys
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from subprocess import Popen

import pytest

from tests.components.util import free_port_range, http_ok, start_process, stop_process, wait_until

START_TIMEOUT_S = 60.0


@dataclass
class VllmSim:
    """A running simulator process serving ``instances`` ports from ``port``."""

    process: Popen[bytes]
    host: str
    port: int
    instances: int
    model: str
    log_path: Path
    role: str
    ports: list[int] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def url(self, index: int) -> str:
        return f"http://{self.host}:{self.port + index}"

    def metrics_text(self, index: int = 0, timeout_s: float = 10.0) -> str:
        with urllib.request.urlopen(self.url(index) + "/metrics", timeout=timeout_s) as resp:
            return bytes(resp.read()).decode()

    def complete(
        self, prompt: str | list[int], max_tokens: int, index: int = 0, timeout_s: float = 60.0
    ) -> dict[str, object]:
        body = json.dumps(
            {"model": self.model, "prompt": prompt, "max_tokens": max_tokens, "ignore_eos": True}
        ).encode()
        request = urllib.request.Request(
            self.url(index) + "/v1/completions",
            data=body,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=timeout_s) as resp:
            return dict(json.loads(resp.read()))

    def stop(self) -> None:
        stop_process(self.process)


def start_vllm_sim(
    workdir: Path,
    profile_spec: str = "paper",
    config: str | None = None,
    role: str = "both",
    time_scale: float = 1.0,
    model_name: str = "sim-model",
    instances: int = 1,
    extra_args: tuple[str, ...] = (),
) -> VllmSim:
    """Start ``pdscaler vllm-sim`` and wait until every instance answers ``/health``."""
    port = free_port_range(instances)
    ports = [port + i for i in range(instances)]
    argv = [
        sys.executable,
        "-m",
        "pdscaler",
        "vllm-sim",
        "--profile",
        profile_spec,
        "--role",
        role,
        "--port",
        str(port),
        "--instances",
        str(instances),
        "--time-scale",
        str(time_scale),
        "--model-name",
        model_name,
        *extra_args,
    ]
    if config:
        argv += ["--config", config]
    log_path = workdir / f"vllm-sim-{port}.log"
    process = start_process(argv, log_path=log_path)
    sim = VllmSim(process, "127.0.0.1", port, instances, model_name, log_path, role, ports)
    try:
        for index in range(instances):
            wait_until(
                lambda i=index: http_ok(sim.url(i) + "/health"),  # type: ignore[misc]
                timeout_s=START_TIMEOUT_S,
                component="vllm-sim",
                what=f"/health on port {port + index}",
                process=process,
                log_path=log_path,
            )
    except BaseException:
        sim.stop()
        raise
    return sim


@pytest.fixture
def vllm_sim(tmp_path: Path) -> Iterator[Callable[..., VllmSim]]:
    """Factory: ``vllm_sim(profile=..., role=..., time_scale=..., instances=...)``."""
    started: list[VllmSim] = []

    def factory(
        profile: str = "paper",
        role: str = "both",
        time_scale: float = 1.0,
        config: str | None = None,
        instances: int = 1,
        model_name: str = "sim-model",
        extra_args: tuple[str, ...] = (),
    ) -> VllmSim:
        sim = start_vllm_sim(
            tmp_path, profile, config, role, time_scale, model_name, instances, extra_args
        )
        started.append(sim)
        return sim

    yield factory
    for sim in started:
        sim.stop()
