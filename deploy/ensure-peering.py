"""Create the kopf peering object(s) that the operator's settings name, when missing.

Run by the operator pod's init container (``deploy/`` and the Helm chart mount this file from
a ConfigMap) with the pod's ServiceAccount, before ``pdscaler operator run`` starts. kopf pauses
an operator whose peering object does not exist, so the object must be there first; creating it
here, and not in the manifests, keeps one ``kubectl apply``/``helm install`` free of custom
objects whose CRD is created in the same step, and keeps the object out of any release's
ownership (several installs share one peering and only one of them acts).

Reads the operator's own settings (``PDSCALER_*``, validated the same way):
``PDSCALER_STANDALONE`` (nothing to do), ``PDSCALER_PEERING`` (the name, default ``pdscaler``),
``PDSCALER_NAMESPACES`` (a ``KopfPeering`` in each) or else a ``ClusterKopfPeering``.
An existing object is left as it is. Exit codes: 0 done, 2 bad settings, 1 API error.
"""

from __future__ import annotations

import sys

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from pdscaler.controller.settings import SettingsError, load_settings

GROUP, VERSION = "kopf.dev", "v1"


def main() -> int:
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"ensure-peering: invalid settings:\n{exc}", file=sys.stderr)
        return 2
    if settings.standalone:
        print("ensure-peering: standalone, no peering object needed")
        return 0
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    api = client.CustomObjectsApi()
    name = settings.peering_name
    targets = [("KopfPeering", ns) for ns in settings.namespaces] or [("ClusterKopfPeering", "")]
    for kind, namespace in targets:
        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": kind,
                "metadata": {"name": name, "labels": {"app.kubernetes.io/name": "pdscaler"}}}
        where = f"{kind} {namespace + '/' if namespace else ''}{name}"
        try:
            if namespace:
                api.create_namespaced_custom_object(GROUP, VERSION, namespace, "kopfpeerings",
                                                    body)
            else:
                api.create_cluster_custom_object(GROUP, VERSION, "clusterkopfpeerings", body)
            print(f"ensure-peering: created {where}")
        except ApiException as exc:
            if exc.status != 409:
                print(f"ensure-peering: creating {where} failed: {exc.status} {exc.reason}: "
                      f"{exc.body}", file=sys.stderr)
                return 1
            print(f"ensure-peering: {where} exists")
    return 0


if __name__ == "__main__":
    sys.exit(main())
