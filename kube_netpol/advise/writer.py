"""NetworkPolicy writes through the official client, each one bounded by its timeouts."""

from __future__ import annotations

import json
from typing import Any, Callable, Mapping

from kube_netpol.advise.owned import OwnedPolicy


class WriteFailed(Exception):
    def __init__(self, status: int | None, reason: str) -> None:
        super().__init__(reason)
        self.status = status


class KubernetesWriter:
    """Create, update and delete NetworkPolicies through the official client; every call bounded."""

    def __init__(self, api_client: Any, connect_timeout: float = 5.0, write_timeout: float = 15.0) -> None:
        from kubernetes import client as k8s

        self._k8s = k8s
        self._api = k8s.NetworkingV1Api(api_client)
        self._timeout = (connect_timeout, write_timeout)

    def _call(self, method: Callable[..., Any], *args: Any, **kwargs: Any) -> dict[str, Any]:
        try:
            response = method(*args, _preload_content=False, _request_timeout=self._timeout, **kwargs)
            data = response.data
            response.release_conn()
        except Exception as err:  # noqa: BLE001 - HTTP errors, timeouts, refused connections
            status = getattr(err, "status", None)
            reason = ""
            body = getattr(err, "body", None)
            if body:
                try:
                    reason = json.loads(body).get("reason", "")
                except (ValueError, AttributeError):
                    reason = ""
            raise WriteFailed(status if isinstance(status, int) else None,
                              reason or getattr(err, "reason", None) or str(err) or type(err).__name__) from None
        return json.loads(data) if data else {}

    def create(self, policy: Mapping[str, Any]) -> dict[str, Any]:
        return self._call(self._api.create_namespaced_network_policy, policy["metadata"]["namespace"], dict(policy))

    def update(self, policy: Mapping[str, Any], owned: OwnedPolicy) -> dict[str, Any]:
        body = json.loads(json.dumps(policy))
        body["metadata"]["resourceVersion"] = owned.resource_version  # optimistic concurrency: ours, or a 409
        return self._call(self._api.replace_namespaced_network_policy, owned.name, owned.namespace, body)

    def delete(self, owned: OwnedPolicy) -> None:
        k8s = self._k8s
        preconditions = k8s.V1Preconditions(uid=owned.uid or None, resource_version=owned.resource_version or None)
        self._call(self._api.delete_namespaced_network_policy, owned.name, owned.namespace,
                   body=k8s.V1DeleteOptions(preconditions=preconditions))
