"""Real components started by the test suite on loopback: kube-apiserver, Prometheus, vLLM."""
