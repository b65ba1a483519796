"""The learning state (calibration samples, rate history, dispersion) survives the API server.

The tick's only memory between reconciles is the status the server stores: a field the CRD's
structural schema did not know would be pruned silently and the operator would never learn.
"""

from __future__ import annotations

import json

import pytest
from pdscaler.controller.api import parse_status

from tests.components.kube import KubeControlPlane
from tests.integration.test_operator_support import (  # noqa: F401 - fixtures
    operator_crds_fixture,
)
from tests.unit.test_api_models import VALID_SPEC
from tests.unit.test_online_calibration import live_spec, run_ticks

pytestmark = pytest.mark.integration


def test_the_server_stores_the_whole_learning_state(
    operator_crds: KubeControlPlane, kube_namespace: str
) -> None:
    status = run_ticks(live_spec(forecast="seasonal", forecastPeriodS=600), 40)
    assert status.prefill.calibration is not None and status.prefill.calibration.samples
    assert status.forecast is not None and status.forecast.recent and status.forecast.history
    obj = {"apiVersion": "pdscaler.io/v1alpha1", "kind": "PDDeployment",
           "metadata": {"name": "learning", "namespace": kube_namespace}, "spec": VALID_SPEC}
    operator_crds.kubectl("create", "-f", "-", input=json.dumps(obj))
    operator_crds.kubectl(
        "-n", kube_namespace, "patch", "pddeployment", "learning", "--subresource=status",
        "--type=merge", "-p", json.dumps({"status": status.to_wire()}),
    )
    stored = json.loads(operator_crds.kubectl(
        "-n", kube_namespace, "get", "pddeployment", "learning", "-o", "json").stdout)["status"]
    assert parse_status(stored) == status
    assert stored["prefill"]["calibration"]["samples"][0].keys() == {"time", "factor"}
    assert stored["observed"]["arrivalDispersionSource"] == "default"
