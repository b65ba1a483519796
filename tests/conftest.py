"""Test-suite wiring: the real-component fixtures are pytest plugins under tests/components."""

pytest_plugins = [
    "tests.components.kube",
    "tests.components.cluster",
    "tests.components.prometheus",
    "tests.components.vllm_cpu",
    "tests.components.vllm_sim",
]
