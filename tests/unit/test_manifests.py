"""deploy/k8s/check_manifests.py's rules for the two kinds of Rapport Deployment: a gRPC service must
be probed over gRPC and the staff console over HTTP on its health path, never the other way round;
and the console's keys, session secret and cookie. `make k8s-validate` runs the same rules on the
rendered overlays; here each rule is shown to refuse what it should, on hand-made manifests."""

from __future__ import annotations

import copy
import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from services.console.app import HEALTH_PATH
from services.console.settings import ConsoleSettings

CHECKER = Path(__file__).parents[2] / "deploy/k8s/check_manifests.py"
NAMESPACE = "rapport"
Doc = dict[str, Any]


def load_checker() -> Any:
    spec = importlib.util.spec_from_file_location("check_manifests", CHECKER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


check_manifests = load_checker()


def meta(name: str, **labels: str) -> Doc:
    return {"name": name, "namespace": NAMESPACE, "labels": {"app.kubernetes.io/name": name, **labels}}


def common_key(key: str) -> Doc:
    return {"name": key, "valueFrom": {"configMapKeyRef": {"name": "rapport-common-0123456789", "key": key}}}


def deployment(name: str, container: Doc, annotations: Doc | None = None) -> Doc:
    return {
        "kind": "Deployment",
        "metadata": meta(name, **{"app.kubernetes.io/component": "service"}),
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app.kubernetes.io/name": name}},
            "template": {
                "metadata": {
                    "labels": {"app.kubernetes.io/name": name, "app.kubernetes.io/component": "service"},
                    "annotations": annotations or {},
                },
                "spec": {
                    "serviceAccountName": name,
                    "automountServiceAccountToken": False,
                    "terminationGracePeriodSeconds": 30,
                    "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [
                        {
                            "name": name,
                            "image": f"rapport/{name}:0.1.0",
                            "resources": {
                                "requests": {"cpu": "100m", "memory": "128Mi"},
                                "limits": {"cpu": "1", "memory": "256Mi"},
                            },
                            "securityContext": {
                                "allowPrivilegeEscalation": False,
                                "readOnlyRootFilesystem": True,
                                "capabilities": {"drop": ["ALL"]},
                            },
                            "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
                            **container,
                        }
                    ],
                    "volumes": [{"name": "tmp", "emptyDir": {}}],
                },
            },
        },
    }


def around(name: str, port: str) -> list[Doc]:
    """A workload's ServiceAccount, Service and PodDisruptionBudget."""
    selector = {"app.kubernetes.io/name": name}
    return [
        {"kind": "ServiceAccount", "metadata": meta(name), "automountServiceAccountToken": False},
        {
            "kind": "Service",
            "metadata": meta(name),
            "spec": {"selector": selector, "ports": [{"name": port, "port": 1, "targetPort": port}]},
        },
        {
            "kind": "PodDisruptionBudget",
            "metadata": meta(name),
            "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector}},
        },
    ]


def http_probe(path: str = HEALTH_PATH) -> Doc:
    return {"httpGet": {"path": path, "port": "http"}}


def rapport() -> list[Doc]:
    """identity (gRPC) and the staff console (HTTP), as the overlays render them: no problem."""
    common = {
        "RAPPORT_HOST": "0.0.0.0",
        "RAPPORT_LOG_LEVEL": "info",
        "RAPPORT_SHUTDOWN_DRAIN_S": "5",
        "RAPPORT_SHUTDOWN_GRACE_S": "10",
        "RAPPORT_METRICS_PORT": "9090",
        "RAPPORT_OTLP_ENDPOINT": "",
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": "0.1",
    }
    identity = deployment(
        "identity",
        {
            "ports": [{"name": "grpc", "containerPort": 50051}, {"name": "metrics", "containerPort": 9090}],
            "envFrom": [
                {"configMapRef": {"name": "rapport-common-0123456789"}},
                {"configMapRef": {"name": "identity-config-0123456789"}},
                {"secretRef": {"name": "identity-secrets"}},
            ],
            **{probe: {"grpc": {"port": 50051}} for probe in check_manifests.PROBES},
        },
        {"prometheus.io/scrape": "true", "prometheus.io/port": "9090"},
    )
    console = deployment(
        "console",
        {
            "ports": [{"name": "http", "containerPort": 8060}],
            "envFrom": [
                {"configMapRef": {"name": "console-config-0123456789"}},
                {"secretRef": {"name": "console-secrets"}},
            ],
            "env": [
                common_key(key)
                for key in (
                    "RAPPORT_LOG_LEVEL",
                    "RAPPORT_SHUTDOWN_DRAIN_S",
                    "RAPPORT_SHUTDOWN_GRACE_S",
                    "RAPPORT_OTLP_ENDPOINT",
                    "OTEL_TRACES_SAMPLER",
                    "OTEL_TRACES_SAMPLER_ARG",
                )
            ],
            **{probe: http_probe() for probe in check_manifests.PROBES},
        },
    )
    return [
        {
            "kind": "Namespace",
            "metadata": {"name": NAMESPACE, "labels": {"pod-security.kubernetes.io/enforce": "restricted"}},
        },
        {"kind": "ConfigMap", "metadata": meta("rapport-common-0123456789"), "data": common},
        {
            "kind": "ConfigMap",
            "metadata": meta("identity-config-0123456789"),
            "data": {"RAPPORT_SERVICE_NAME": "identity", "RAPPORT_PORT": "50051"},
        },
        {
            "kind": "ConfigMap",
            "metadata": meta("console-config-0123456789"),
            "data": {
                "RAPPORT_HOST": "0.0.0.0",
                "RAPPORT_CONSOLE_PORT": "8060",
                "RAPPORT_CONSOLE_SECURE_COOKIE": "false",
            },
        },
        {
            "kind": "Secret",
            "metadata": meta("identity-secrets"),
            "stringData": {"RAPPORT_API_KEYS": "a:rk_0123456789abcdef:*"},
        },
        {
            "kind": "Secret",
            "metadata": meta("console-secrets"),
            "stringData": {
                "RAPPORT_API_KEYS": "staff:rk_0123456789abcdef:console.view",
                "RAPPORT_CONSOLE_SECRET": "a-session-secret-of-32-characters",
                "RAPPORT_IDENTITY_API_KEY": "rk_0123456789abcdef",
            },
        },
        identity,
        *around("identity", "grpc"),
        console,
        *around("console", "http"),
    ]


def problems(docs: list[Doc]) -> list[str]:
    found: list[str] = check_manifests.Checker(docs).run()
    return found


def named(docs: list[Doc], kind: str, name: str) -> Doc:
    return next(doc for doc in docs if doc["kind"] == kind and doc["metadata"]["name"] == name)


def container_of(docs: list[Doc], name: str) -> Doc:
    container: Doc = named(docs, "Deployment", name)["spec"]["template"]["spec"]["containers"][0]
    return container


def test_the_rules_know_the_consoles_health_path_and_port_setting() -> None:
    port_setting, path = check_manifests.HTTP_SERVICES["console"]
    assert path == HEALTH_PATH
    assert port_setting in {field.metadata["env"] for field in ConsoleSettings.__dataclass_fields__.values()}


def test_a_grpc_service_and_an_http_probed_console_pass() -> None:
    assert problems(rapport()) == []


def tls_ingress(docs: list[Doc]) -> None:
    docs.append(
        {
            "kind": "Ingress",
            "metadata": meta("console"),
            "spec": {
                "tls": [{"hosts": ["console.shop.example"], "secretName": "console-tls"}],
                "rules": [
                    {
                        "host": "console.shop.example",
                        "http": {
                            "paths": [
                                {"path": "/", "backend": {"service": {"name": "console", "port": {"name": "http"}}}}
                            ]
                        },
                    }
                ],
            },
        }
    )


def secret_in_config_map(docs: list[Doc]) -> None:
    named(docs, "ConfigMap", "console-config-0123456789")["data"]["RAPPORT_MESSAGING_API_KEY"] = "rk_0123456789abcdef"


@pytest.mark.parametrize(
    ("breaks", "expected"),
    [
        # The console probed as a gRPC service, by TCP, or on a path that needs a session.
        (
            lambda docs: container_of(docs, "console").update(readinessProbe={"grpc": {"port": 8060}}),
            "console: readinessProbe: an httpGet probe of /healthz",
        ),
        (
            lambda docs: container_of(docs, "console").update(livenessProbe={"tcpSocket": {"port": "http"}}),
            "console: livenessProbe: an httpGet probe of /healthz",
        ),
        (
            lambda docs: container_of(docs, "console").update(startupProbe=http_probe("/")),
            "console: startupProbe: an httpGet probe of /healthz",
        ),
        # A gRPC service probed over HTTP, or with two handlers in one probe.
        (
            lambda docs: container_of(docs, "identity").update(readinessProbe=http_probe()),
            "identity: readinessProbe: a native grpc probe on the grpc port is needed",
        ),
        (
            lambda docs: container_of(docs, "identity")["livenessProbe"].update(httpGet={"path": "/", "port": 9090}),
            "identity: livenessProbe: one handler only",
        ),
        # Ports that disagree with the settings, or that the console does not serve.
        (
            lambda docs: container_of(docs, "console").update(ports=[{"name": "http", "containerPort": 8080}]),
            "port http (8080) differs from RAPPORT_CONSOLE_PORT (8060)",
        ),
        (
            lambda docs: container_of(docs, "console")["ports"].append({"name": "grpc", "containerPort": 50051}),
            "port grpc: console serves HTTP on its port http only",
        ),
        (
            lambda docs: named(docs, "Deployment", "console")["spec"]["template"]["metadata"].update(
                annotations={"prometheus.io/scrape": "true"}
            ),
            "console serves no metrics",
        ),
        # Keys and secrets only from Secrets; every replica signs cookies with the same secret.
        (secret_in_config_map, "RAPPORT_MESSAGING_API_KEY holds a secret: take it from a Secret, not a ConfigMap"),
        (
            lambda docs: named(docs, "Secret", "console-secrets")["stringData"].pop("RAPPORT_CONSOLE_SECRET"),
            "RAPPORT_CONSOLE_SECRET: at least 16 bytes",
        ),
        # Behind a TLS Ingress the session cookie must say HTTPS-only.
        (tls_ingress, "Ingress console serves HTTPS: set RAPPORT_CONSOLE_SECURE_COOKIE=true"),
        # A single ConfigMap key that does not exist, and a setting the console does not have.
        (
            lambda docs: container_of(docs, "console")["env"].append(common_key("RAPPORT_NO_SUCH_KEY")),
            "RAPPORT_NO_SUCH_KEY: no key RAPPORT_NO_SUCH_KEY in ConfigMap rapport-common-0123456789",
        ),
        (
            lambda docs: named(docs, "ConfigMap", "console-config-0123456789")["data"].update(
                RAPPORT_CASSANDRA_HOSTS="x"
            ),
            "RAPPORT_CASSANDRA_HOSTS is not a setting of console",
        ),
        # No drain on SIGTERM.
        (
            lambda docs: named(docs, "ConfigMap", "rapport-common-0123456789")["data"].update(
                RAPPORT_SHUTDOWN_DRAIN_S="0"
            ),
            "console: RAPPORT_SHUTDOWN_DRAIN_S=0.0",
        ),
    ],
)
def test_each_rule_refuses_what_it_should(breaks: Callable[[list[Doc]], object], expected: str) -> None:
    docs = copy.deepcopy(rapport())
    breaks(docs)
    found = problems(docs)
    assert any(expected in problem for problem in found), found


def test_a_tls_ingress_with_a_secure_cookie_passes() -> None:
    docs = rapport()
    tls_ingress(docs)
    named(docs, "ConfigMap", "console-config-0123456789")["data"]["RAPPORT_CONSOLE_SECURE_COOKIE"] = "true"
    assert problems(docs) == []
