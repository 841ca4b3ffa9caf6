#!/usr/bin/env bash
# Installs the Go peers that check Rapport from outside (pinned versions) into $RAPPORT_CACHE/bin:
# grpcurl (reflection), grpc-health-probe, ghz (load), buf (proto lint), kubeconform (manifests).
#   scripts/tools.sh [tool ...]   # default: all
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RAPPORT_CACHE="${RAPPORT_CACHE:-$REPO/.cache}"
BIN="$RAPPORT_CACHE/bin"
declare -A MODULES=(
  [grpcurl]="github.com/fullstorydev/grpcurl/cmd/grpcurl@v1.9.4"
  [grpc-health-probe]="github.com/grpc-ecosystem/grpc-health-probe@v0.4.61"
  [ghz]="github.com/bojand/ghz/cmd/ghz@v0.93.0"
  [buf]="github.com/bufbuild/buf/cmd/buf@v1.75.0"
  [kubeconform]="github.com/yannh/kubeconform/cmd/kubeconform@v0.8.0"
)
command -v go >/dev/null || { echo "tools.sh: Go is needed (https://go.dev/dl)" >&2; exit 1; }
mkdir -p "$BIN"
for tool in "${@:-${!MODULES[@]}}"; do
  [[ -x "$BIN/$tool" ]] && continue
  echo "tools.sh: installing $tool (${MODULES[$tool]})" >&2
  GOTOOLCHAIN=local GOBIN="$BIN" GOFLAGS=-mod=mod go install "${MODULES[$tool]}"
done
