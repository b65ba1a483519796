"""The Kubernetes controller for PDDeployment objects.

* :mod:`~pdscaler.controller.core` — the pure decision logic (:func:`~.core.tick`): what one
  reconcile decides, including when the operator holds replicas; no I/O;
* :mod:`~pdscaler.controller.shell` — one reconcile: read everything, tick, apply;
* :mod:`~pdscaler.controller.handlers` — kopf wiring (daemons, events, probe);
* :mod:`~pdscaler.controller.adapters` — the only I/O: Kubernetes API and Prometheus clients;
* :mod:`~pdscaler.controller.api` / :mod:`~pdscaler.controller.crd` — the PDDeployment API
  models and the CRD generated from them;
* :mod:`~pdscaler.controller.settings` / :mod:`~pdscaler.controller.observability` — operator
  settings, logs and the operator's own metrics.
"""
