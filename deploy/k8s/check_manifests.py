"""Rapport's rules for rendered Kubernetes manifests, beyond what a JSON schema can say.

  python check_manifests.py rendered.yaml [more.yaml ...]   # exit 1 and one line per problem

Run by scripts/k8s-validate.sh after kubeconform, on each overlay's `kustomize build` output.
Checks: the "restricted" Pod Security Standard and the deployment conventions of STYLE.md (own
ServiceAccount without token, non-root, read-only root with /tmp, resources, native gRPC probes
on the port named grpc for the gRPC services, HTTP probes on the health path for the staff
console), that objects referenced by name exist (ConfigMaps and their keys, Secrets, Services,
scale targets), that ports agree with the RAPPORT_* settings, that keys and secrets come from
Secrets, that the termination grace period covers RAPPORT_SHUTDOWN_DRAIN_S +
RAPPORT_SHUTDOWN_GRACE_S, and that Cassandra has enough nodes for the keyspaces' replication
factor.
"""

from __future__ import annotations

import ast
import base64
import dataclasses
import importlib
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# The services' settings classes are plain dataclasses (no gRPC, no drivers): import them from the
# work tree to check every RAPPORT_* variable a pod gets.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from services.common.settings import CommonSettings, SettingsError, TracingSettings, load_settings
from services.console.settings import ConsoleSettings

Doc = dict[str, Any]
WORKLOADS = ("Deployment", "StatefulSet", "Job")
RESTRICTED_VOLUMES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}
# The official Cassandra image's entrypoint writes the node's addresses and seeds into its config.
WRITABLE_ROOT = {("StatefulSet", "cassandra", "cassandra")}
# Closing the gRPC channels, Redis and Cassandra after the shutdown grace period.
CLOSE_MARGIN_S = 10
# gRPC services: native grpc probes on the port named grpc (RAPPORT_PORT), metrics on RAPPORT_METRICS_PORT.
GRPC_SERVICES = ("identity", "profile", "decision", "messaging")
# HTTP services: httpGet probes of an unauthenticated health path on the port named http, which the
# setting names. The staff console's /healthz (services/console/app.py, HEALTH_PATH) needs no session.
HTTP_SERVICES = {"console": ("RAPPORT_CONSOLE_PORT", "/healthz")}
SERVICES = (*GRPC_SERVICES, *HTTP_SERVICES)
PROBES = ("startupProbe", "readinessProbe", "livenessProbe")
PROBE_HANDLERS = {"exec", "grpc", "httpGet", "tcpSocket"}
# Settings that hold keys, secrets and passwords: from a Secret, never a ConfigMap or a literal value.
SECRET_SETTING = re.compile(r"RAPPORT_\w*(API_KEYS?|SECRET|PASSWORD|TOKEN)")
# Redis sizes (k, kb, mb, ...) and Kubernetes quantities (Ki, Mi, Gi, ...).
_UNITS = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9, "kb": 1024, "mb": 1024**2, "gb": 1024**3}
_UNITS.update({"ki": 1024, "mi": 1024**2, "gi": 1024**3})


def size_bytes(quantity: str) -> float:
    match = re.fullmatch(r"([0-9.]+)\s*([a-zA-Z]*)", str(quantity))
    if not match or match.group(2).lower() not in _UNITS:
        raise ValueError(f"unknown size {quantity!r}")
    return float(match.group(1)) * _UNITS[match.group(2).lower()]


def settings_class(service: str) -> type[TracingSettings]:
    """The settings dataclass of services/<service>/settings.py (the console's is no CommonSettings)."""
    module = importlib.import_module(f"services.{service}.settings")
    return next(
        value
        for value in vars(module).values()
        if isinstance(value, type)
        and issubclass(value, TracingSettings)
        and value not in (TracingSettings, CommonSettings)
    )


def selects(selector: dict[str, Any] | None, labels: dict[str, str]) -> bool:
    """A Service (plain map) or LabelSelector (matchLabels/matchExpressions) matches `labels`."""
    if not selector:
        return False
    if "matchLabels" not in selector and "matchExpressions" not in selector:
        selector = {"matchLabels": selector}
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expression in selector.get("matchExpressions") or []:
        value, operator = labels.get(expression["key"]), expression["operator"]
        if operator == "In" and value not in expression["values"]:
            return False
        if operator == "NotIn" and value in expression["values"]:
            return False
        if operator == "Exists" and value is None:
            return False
        if operator == "DoesNotExist" and value is not None:
            return False
    return True


class Checker:
    def __init__(self, docs: list[Doc]) -> None:
        self.docs = docs
        self.problems: list[str] = []
        self.by_kind: dict[str, dict[str, Doc]] = {}
        for doc in docs:
            self.by_kind.setdefault(doc["kind"], {})[doc["metadata"]["name"]] = doc

    def problem(self, doc: Doc, message: str) -> None:
        self.problems.append(f"{doc['kind']}/{doc['metadata']['name']}: {message}")

    def named(self, kind: str) -> dict[str, Doc]:
        return self.by_kind.get(kind, {})

    def generated(self, kind: str, name: str) -> Doc | None:
        """An object by its name before kustomize's generators added their hash suffix."""
        for full_name, doc in self.named(kind).items():
            if re.fullmatch(rf"{re.escape(name)}(-[a-z0-9]{{10}})?", full_name):
                return doc
        return None

    def config(self, container: Doc) -> dict[str, str]:
        """The environment a container gets from its ConfigMaps (envFrom, later wins) and env values
        (literal, or one key of a ConfigMap)."""
        env: dict[str, str] = {}
        config_maps = self.named("ConfigMap")
        for source in container.get("envFrom") or []:
            if "configMapRef" in source:
                env.update(config_maps.get(source["configMapRef"]["name"], {}).get("data") or {})
        for variable in container.get("env") or []:
            reference = (variable.get("valueFrom") or {}).get("configMapKeyRef")
            if "value" in variable:
                env[variable["name"]] = variable["value"]
            elif reference and reference["key"] in (config_maps.get(reference["name"], {}).get("data") or {}):
                env[variable["name"]] = config_maps[reference["name"]]["data"][reference["key"]]
        return env

    def secret_values(self, name: str) -> dict[str, str] | None:
        secret = self.named("Secret").get(name)
        if secret is None:
            return None
        values = {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}
        values.update(secret.get("stringData") or {})
        return values

    def workloads(self) -> Iterator[tuple[Doc, Doc]]:
        for kind in WORKLOADS:
            for doc in self.named(kind).values():
                yield doc, doc["spec"]["template"]

    def run(self) -> list[str]:
        self.check_namespace()
        for doc, template in self.workloads():
            self.check_pod(doc, template["spec"])
            self.check_references(doc, template["spec"])
            if (
                doc["kind"] == "Deployment"
                and template["metadata"]["labels"].get("app.kubernetes.io/component") == "service"
            ):
                self.check_rapport_service(doc, template)
        self.check_services()
        self.check_budgets_and_autoscalers()
        self.check_cassandra()
        self.check_redis()
        return self.problems

    def check_namespace(self) -> None:
        namespaces = {d["metadata"].get("namespace") for d in self.docs if d["kind"] != "Namespace"}
        if len(namespaces) != 1 or None in namespaces:
            self.problems.append(
                f"every object needs the one namespace of the overlay, got {sorted(map(str, namespaces))}"
            )
        for name, doc in self.named("Namespace").items():
            if doc["metadata"].get("labels", {}).get("pod-security.kubernetes.io/enforce") != "restricted":
                self.problem(doc, "enforce the restricted Pod Security Standard")
            if name not in namespaces:
                self.problem(doc, "the objects are not in this namespace")

    def check_pod(self, doc: Doc, pod: Doc) -> None:
        if pod.get("automountServiceAccountToken") is not False:
            self.problem(doc, "set automountServiceAccountToken: false")
        account = self.named("ServiceAccount").get(pod.get("serviceAccountName", ""))
        if account is None:
            self.problem(doc, "needs its own ServiceAccount (serviceAccountName)")
        elif account.get("automountServiceAccountToken") is not False:
            self.problem(account, "set automountServiceAccountToken: false")
        for field in ("hostNetwork", "hostPID", "hostIPC"):
            if pod.get(field):
                self.problem(doc, f"{field} is not allowed")
        pod_security = pod.get("securityContext") or {}
        volumes = {v["name"]: v for v in pod.get("volumes") or []}
        for volume in volumes.values():
            if not set(volume) - {"name"} <= RESTRICTED_VOLUMES:
                self.problem(doc, f"volume {volume['name']} has a type the restricted profile forbids")
        for container in (pod.get("initContainers") or []) + pod["containers"]:
            where = f"container {container['name']}"
            security = container.get("securityContext") or {}
            if security.get("runAsNonRoot", pod_security.get("runAsNonRoot")) is not True:
                self.problem(doc, f"{where}: runAsNonRoot must be true")
            seccomp = (security.get("seccompProfile") or pod_security.get("seccompProfile") or {}).get("type")
            if seccomp != "RuntimeDefault":
                self.problem(doc, f"{where}: seccompProfile RuntimeDefault needed")
            if security.get("allowPrivilegeEscalation") is not False:
                self.problem(doc, f"{where}: allowPrivilegeEscalation must be false")
            if security.get("privileged"):
                self.problem(doc, f"{where}: privileged is not allowed")
            capabilities = security.get("capabilities") or {}
            if "ALL" not in (capabilities.get("drop") or []) or capabilities.get("add"):
                self.problem(doc, f"{where}: drop ALL capabilities and add none")
            if (doc["kind"], doc["metadata"]["name"], container["name"]) not in WRITABLE_ROOT:
                if security.get("readOnlyRootFilesystem") is not True:
                    self.problem(doc, f"{where}: readOnlyRootFilesystem must be true")
                tmp = [m for m in container.get("volumeMounts") or [] if m["mountPath"] == "/tmp"]
                if not tmp or "emptyDir" not in volumes.get(tmp[0]["name"], {}):
                    self.problem(doc, f"{where}: mount an emptyDir at /tmp (the root is read-only)")
            resources = container.get("resources") or {}
            for bound in ("requests", "limits"):
                if not {"cpu", "memory"} <= set(resources.get(bound) or {}):
                    self.problem(doc, f"{where}: set cpu and memory {bound}")
            image = container.get("image", "")
            if "@sha256:" not in image and (":" not in image.rsplit("/", 1)[-1] or image.endswith(":latest")):
                self.problem(doc, f"{where}: pin the image ({image!r}) by tag or digest, never latest")

    def check_references(self, doc: Doc, pod: Doc) -> None:
        config_maps, secrets = self.named("ConfigMap"), self.named("Secret")
        for volume in pod.get("volumes") or []:
            if "configMap" in volume and volume["configMap"]["name"] not in config_maps:
                self.problem(doc, f"volume {volume['name']}: no ConfigMap {volume['configMap']['name']}")
            if "secret" in volume and volume["secret"]["secretName"] not in secrets:
                self.problem(doc, f"volume {volume['name']}: no Secret {volume['secret']['secretName']}")
        for container in (pod.get("initContainers") or []) + pod["containers"]:
            for source in container.get("envFrom") or []:
                for key, known in (("configMapRef", config_maps), ("secretRef", secrets)):
                    if key in source and source[key]["name"] not in known and not source[key].get("optional"):
                        self.problem(doc, f"container {container['name']}: no {key[:-3]} {source[key]['name']}")
            for variable in container.get("env") or []:
                reference = (variable.get("valueFrom") or {}).get("secretKeyRef")
                if reference and reference["key"] not in (
                    secrets.get(reference["name"], {}).get("stringData")
                    or secrets.get(reference["name"], {}).get("data")
                    or {}
                ):
                    self.problem(doc, f"{variable['name']}: no key {reference['key']} in Secret {reference['name']}")
                reference = (variable.get("valueFrom") or {}).get("configMapKeyRef")
                if (
                    reference
                    and not reference.get("optional")
                    and reference["key"] not in (config_maps.get(reference["name"], {}).get("data") or {})
                ):
                    self.problem(doc, f"{variable['name']}: no key {reference['key']} in ConfigMap {reference['name']}")

    def check_rapport_service(self, doc: Doc, template: Doc) -> None:
        """A Deployment of a Rapport service: the rules its protocol asks for, then those of all."""
        pod = template["spec"]
        container = pod["containers"][0]
        env = self.config(container)
        service = template["metadata"]["labels"].get("app.kubernetes.io/name", "")
        if service not in SERVICES:
            self.problem(doc, f"app.kubernetes.io/name {service!r} is not one of {SERVICES}")
            return
        self.check_settings(doc, service, container, env)
        ports = {p["name"]: p["containerPort"] for p in container.get("ports") or []}
        for probe in PROBES:
            handlers = set(container.get(probe) or {}) & PROBE_HANDLERS
            if len(handlers) > 1:
                self.problem(doc, f"{probe}: one handler only, got {sorted(handlers)}")
        if service in HTTP_SERVICES:
            self.check_http_service(doc, template, service, container, env, ports)
        else:
            self.check_grpc_service(doc, template, container, env, ports)
        if env.get("RAPPORT_HOST") != "0.0.0.0":
            self.problem(doc, "RAPPORT_HOST must be 0.0.0.0 in a pod")
        for variable in container.get("env") or []:
            if SECRET_SETTING.fullmatch(variable["name"]) and "secretKeyRef" not in (variable.get("valueFrom") or {}):
                self.problem(doc, f"{variable['name']} holds a secret: take it from a Secret")
        for variable in self.config_map_variables(container):
            if SECRET_SETTING.fullmatch(variable):
                self.problem(doc, f"{variable} holds a secret: take it from a Secret, not a ConfigMap")
        drain_s = float(env.get("RAPPORT_SHUTDOWN_DRAIN_S", 0))
        grace_s = float(env.get("RAPPORT_SHUTDOWN_GRACE_S", 5))
        if not 3 <= drain_s <= 15:
            self.problem(doc, f"RAPPORT_SHUTDOWN_DRAIN_S={drain_s}: about 5 s lets endpoints catch up")
        if pod.get("terminationGracePeriodSeconds", 30) < drain_s + grace_s + CLOSE_MARGIN_S:
            self.problem(doc, f"terminationGracePeriodSeconds < drain {drain_s} + grace {grace_s} + {CLOSE_MARGIN_S}")

    def check_grpc_service(
        self, doc: Doc, template: Doc, container: Doc, env: dict[str, str], ports: dict[str, int]
    ) -> None:
        if str(ports.get("grpc")) != env.get("RAPPORT_PORT"):
            self.problem(doc, f"port grpc ({ports.get('grpc')}) differs from RAPPORT_PORT ({env.get('RAPPORT_PORT')})")
        if str(ports.get("metrics")) != env.get("RAPPORT_METRICS_PORT"):
            self.problem(doc, "port metrics differs from RAPPORT_METRICS_PORT")
        if template["metadata"].get("annotations", {}).get("prometheus.io/port") != str(ports.get("metrics")):
            self.problem(doc, "the prometheus.io/port annotation is not the metrics port")
        if "RAPPORT_MESSAGING_HTTP_PORT" in env and str(ports.get("http")) != env["RAPPORT_MESSAGING_HTTP_PORT"]:
            self.problem(doc, "port http differs from RAPPORT_MESSAGING_HTTP_PORT")
        for probe in PROBES:
            grpc = (container.get(probe) or {}).get("grpc")
            if not grpc or grpc.get("port") != ports.get("grpc"):
                self.problem(doc, f"{probe}: a native grpc probe on the grpc port is needed")

    def check_http_service(
        self, doc: Doc, template: Doc, service: str, container: Doc, env: dict[str, str], ports: dict[str, int]
    ) -> None:
        port_setting, health_path = HTTP_SERVICES[service]
        if str(ports.get("http")) != env.get(port_setting):
            self.problem(doc, f"port http ({ports.get('http')}) differs from {port_setting} ({env.get(port_setting)})")
        for unexpected in sorted(ports.keys() - {"http"}):
            self.problem(doc, f"port {unexpected}: {service} serves HTTP on its port http only")
        if "prometheus.io/scrape" in template["metadata"].get("annotations", {}):
            self.problem(doc, f"{service} serves no metrics: drop the prometheus.io annotations")
        for probe in PROBES:
            http = (container.get(probe) or {}).get("httpGet")
            if not http or http.get("path") != health_path or http.get("port") not in ("http", ports.get("http")):
                self.problem(doc, f"{probe}: an httpGet probe of {health_path} on the http port is needed")
        self.check_console_sessions(doc, container, env)

    def check_console_sessions(self, doc: Doc, container: Doc, env: dict[str, str]) -> None:
        """Every replica signs and reads the same session cookies, which say HTTPS-only when staff
        reach the console through a TLS Ingress."""
        environ = dict(env)
        secrets = [
            self.secret_values(s["secretRef"]["name"]) for s in container.get("envFrom") or [] if "secretRef" in s
        ]
        for values in secrets:
            environ.update(values or {})
        try:
            settings = load_settings(ConsoleSettings, environ)
        except SettingsError:
            return  # check_settings names the variable
        if None not in secrets and len(settings.session_secret.encode()) < 16:
            self.problem(doc, "RAPPORT_CONSOLE_SECRET: at least 16 bytes from a Secret (every replica shares it)")
        labels = doc["spec"]["template"]["metadata"]["labels"]
        services = {name for name, svc in self.named("Service").items() if selects(svc["spec"].get("selector"), labels)}
        for ingress in self.named("Ingress").values():
            routed = {
                path["backend"]["service"]["name"]
                for rule in ingress["spec"].get("rules") or []
                for path in rule["http"]["paths"]
            }
            if routed & services and ingress["spec"].get("tls") and not settings.secure_cookie:
                self.problem(
                    doc, f"Ingress {ingress['metadata']['name']} serves HTTPS: set RAPPORT_CONSOLE_SECURE_COOKIE=true"
                )

    def config_map_variables(self, container: Doc) -> set[str]:
        """The variables a container gets from ConfigMaps (whole maps, or single keys)."""
        names: set[str] = set()
        for source in container.get("envFrom") or []:
            if "configMapRef" in source:
                names |= set(self.named("ConfigMap").get(source["configMapRef"]["name"], {}).get("data") or {})
        for variable in container.get("env") or []:
            if "configMapKeyRef" in (variable.get("valueFrom") or {}):
                names.add(variable["name"])
        return names

    def check_settings(self, doc: Doc, service: str, container: Doc, env: dict[str, str]) -> None:
        """Every RAPPORT_* variable the container gets is a setting of its service, with a valid value."""
        environ = dict(env)
        for source in container.get("envFrom") or []:
            if "secretRef" in source:
                environ.update(self.secret_values(source["secretRef"]["name"]) or {})
        names = environ.keys() | {e["name"] for e in container.get("env") or []}
        cls = settings_class(service)
        known = {f.metadata["env"] for f in dataclasses.fields(cls) if "env" in f.metadata}
        for unknown in sorted(n for n in names if n.startswith("RAPPORT_") and n not in known):
            self.problem(doc, f"{unknown} is not a setting of {service} (services/{service}/settings.py)")
        try:
            load_settings(cls, environ)
        except SettingsError as error:
            self.problem(doc, str(error))

    def pods_selected(self, selector: dict[str, Any] | None) -> list[tuple[Doc, Doc]]:
        return [(d, t) for d, t in self.workloads() if selects(selector, t["metadata"]["labels"])]

    def check_services(self) -> None:
        for service in self.named("Service").values():
            pods = self.pods_selected(service["spec"].get("selector"))
            if not pods:
                self.problem(service, "selects no pod")
            for port in service["spec"]["ports"]:
                target = port.get("targetPort", port["port"])
                for doc, template in pods:
                    names = {p.get("name") for c in template["spec"]["containers"] for p in c.get("ports") or []}
                    numbers = {p["containerPort"] for c in template["spec"]["containers"] for p in c.get("ports") or []}
                    if target not in names | numbers:
                        self.problem(service, f"targetPort {target} is not a port of {doc['metadata']['name']}")
        for ingress in self.named("Ingress").values():
            for rule in ingress["spec"].get("rules") or []:
                for path in rule["http"]["paths"]:
                    backend = path["backend"]["service"]
                    target_service = self.named("Service").get(backend["name"])
                    if target_service is None or backend["port"].get("name") not in {
                        p.get("name") for p in target_service["spec"]["ports"]
                    }:
                        self.problem(ingress, f"no Service port {backend['name']}:{backend['port']}")

    def check_budgets_and_autoscalers(self) -> None:
        budgets = list(self.named("PodDisruptionBudget").values())
        for budget in budgets:
            if not self.pods_selected(budget["spec"]["selector"]):
                self.problem(budget, "selects no pod")
        for kind in ("Deployment", "StatefulSet"):
            for doc in self.named(kind).values():
                labels = doc["spec"]["template"]["metadata"]["labels"]
                replicas = doc["spec"].get("replicas", 1)
                needs_budget = replicas > 1 or kind == "Deployment"
                if needs_budget and not any(selects(b["spec"]["selector"], labels) for b in budgets):
                    self.problem(doc, "needs a PodDisruptionBudget")
        for autoscaler in self.named("HorizontalPodAutoscaler").values():
            target = autoscaler["spec"]["scaleTargetRef"]
            scaled = self.named(target["kind"]).get(target["name"])
            if scaled is None:
                self.problem(autoscaler, f"no {target['kind']} {target['name']} to scale")
            elif "replicas" in scaled["spec"]:
                self.problem(scaled, "remove spec.replicas: its HorizontalPodAutoscaler owns it")
            elif not scaled["spec"]["template"]["spec"].get("topologySpreadConstraints"):
                self.problem(scaled, "spread the replicas of an autoscaled service (topologySpreadConstraints)")

    def check_cassandra(self) -> None:
        cassandra = self.named("StatefulSet").get("cassandra")
        common = self.generated("ConfigMap", "rapport-common")
        if cassandra is None or common is None:
            return
        replication = ast.literal_eval(common["data"]["RAPPORT_CASSANDRA_REPLICATION"])
        env = self.config(cassandra["spec"]["template"]["spec"]["containers"][0])
        dc = env.get("CASSANDRA_DC")
        if (
            common["data"].get("RAPPORT_CASSANDRA_LOCAL_DC") != dc
            or replication.get("class") != "NetworkTopologyStrategy"
        ):
            self.problem(common, f"replicate with NetworkTopologyStrategy in the Cassandra DC ({dc}), as the local DC")
        elif int(replication.get(dc, 0)) > cassandra["spec"].get("replicas", 1):
            self.problem(common, f"replication factor {replication.get(dc)} exceeds the Cassandra nodes")
        nodes = {f"cassandra-{n}.cassandra" for n in range(cassandra["spec"].get("replicas", 1))}
        seeds = env.get("CASSANDRA_SEEDS", "").split(",")
        if not set(seeds) <= nodes:
            self.problem(cassandra, f"CASSANDRA_SEEDS {seeds} must name existing nodes")

    def check_redis(self) -> None:
        redis = self.named("StatefulSet").get("redis")
        if redis is None:
            return
        container = redis["spec"]["template"]["spec"]["containers"][0]
        env = self.config(container)
        args = container.get("args") or []
        for flag, value in (
            ("--appendonly", "yes"),
            ("--appendfsync", "everysec"),
            ("--maxmemory-policy", "noeviction"),
        ):
            if flag not in args or args[args.index(flag) + 1] != value:
                self.problem(redis, f"run with {flag} {value}")
        if size_bytes(env["REDIS_MAXMEMORY"]) > 0.8 * size_bytes(container["resources"]["limits"]["memory"]):
            self.problem(redis, "REDIS_MAXMEMORY must leave room under the memory limit (AOF rewrites fork)")


def main(paths: list[str]) -> int:
    import yaml  # here, so that the rules (Checker) can be imported and tested without PyYAML

    docs: list[Doc] = []
    for path in paths:
        with open(path, encoding="utf-8") as stream:
            docs.extend(d for d in yaml.safe_load_all(stream) if d)
    problems = Checker(docs).run()
    for problem in problems:
        print(problem)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
