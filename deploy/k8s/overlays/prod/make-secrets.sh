#!/usr/bin/env bash
# Prints the Secrets the prod overlay expects, with fresh random keys, as YAML on stdout:
#
#   SMTP_PASSWORD=… PUSH_AUTH_TOKEN=… deploy/k8s/overlays/prod/make-secrets.sh [namespace] | kubectl apply -f -
#   (or pipe it to kubeseal / your secret manager instead of applying it directly)
#
# Every caller gets its own API key with only the scopes it uses: profile, decision, messaging and
# the staff console towards their peers, plus "storefront" (storefront and apps), "backoffice"
# (admin RPCs) and "staff" (signs in to the console), whose keys land in the Secret
# rapport-client-keys for those teams. Running it again rotates every key:
# apply, then `kubectl -n rapport rollout restart deployment` (keys are read at start-up).
set -euo pipefail

NAMESPACE="${1:-rapport}"
key() { printf 'rk_%s' "$(od -An -N24 -tx1 /dev/urandom | tr -d ' \n')"; }
secret() { od -An -N32 -tx1 /dev/urandom | tr -d ' \n'; }
# YAML single-quoted scalar: only ' needs escaping (doubled).
quote() { printf "'%s'" "${1//\'/\'\'}"; }

profile_to_identity=$(key); decision_to_identity=$(key); messaging_to_identity=$(key)
decision_to_profile=$(key); messaging_to_profile=$(key); messaging_to_decision=$(key)
console_to_identity=$(key); console_to_profile=$(key); console_to_decision=$(key); console_to_messaging=$(key)
storefront=$(key); backoffice=$(key); staff=$(key); redis_password=$(secret)

emit() {  # name, then KEY=VALUE pairs
  local name=$1; shift
  printf -- '---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: %s\n  namespace: %s\n' "$name" "$NAMESPACE"
  printf '  labels:\n    app.kubernetes.io/part-of: rapport\ntype: Opaque\nstringData:\n'
  local pair
  for pair in "$@"; do printf '  %s: %s\n' "${pair%%=*}" "$(quote "${pair#*=}")"; done
}

emit identity-secrets \
  "RAPPORT_API_KEYS=profile:$profile_to_identity:identity.resolve,identity.admin;decision:$decision_to_identity:identity.resolve;messaging:$messaging_to_identity:identity.resolve,identity.link;console:$console_to_identity:identity.resolve;storefront:$storefront:identity.resolve,identity.link;backoffice:$backoffice:identity.resolve,identity.admin"
emit profile-secrets \
  "RAPPORT_API_KEYS=decision:$decision_to_profile:profile.read;messaging:$messaging_to_profile:profile.track,profile.read;console:$console_to_profile:profile.read;storefront:$storefront:profile.track,profile.read;backoffice:$backoffice:profile.read,profile.admin" \
  "RAPPORT_IDENTITY_API_KEY=$profile_to_identity"
emit decision-secrets \
  "RAPPORT_API_KEYS=messaging:$messaging_to_decision:decision.decide;console:$console_to_decision:decision.admin;storefront:$storefront:decision.decide;backoffice:$backoffice:decision.decide,decision.admin" \
  "RAPPORT_IDENTITY_API_KEY=$decision_to_identity" \
  "RAPPORT_PROFILE_API_KEY=$decision_to_profile" \
  "RAPPORT_DECISION_SECRET=$(secret)"
emit messaging-secrets \
  "RAPPORT_API_KEYS=console:$console_to_messaging:messaging.read;storefront:$storefront:messaging.send,messaging.read;backoffice:$backoffice:messaging.send,messaging.read,messaging.admin" \
  "RAPPORT_IDENTITY_API_KEY=$messaging_to_identity" \
  "RAPPORT_PROFILE_API_KEY=$messaging_to_profile" \
  "RAPPORT_DECISION_API_KEY=$messaging_to_decision" \
  "RAPPORT_MESSAGING_SECRET=$(secret)" \
  "RAPPORT_SMTP_PASSWORD=${SMTP_PASSWORD:-}" \
  "RAPPORT_PUSH_AUTH_TOKEN=${PUSH_AUTH_TOKEN:-}"
emit console-secrets \
  "RAPPORT_API_KEYS=staff:$staff:console.view" \
  "RAPPORT_CONSOLE_SECRET=$(secret)" \
  "RAPPORT_IDENTITY_API_KEY=$console_to_identity" \
  "RAPPORT_PROFILE_API_KEY=$console_to_profile" \
  "RAPPORT_DECISION_API_KEY=$console_to_decision" \
  "RAPPORT_MESSAGING_API_KEY=$console_to_messaging"
emit redis-auth \
  "password=$redis_password" \
  "url=redis://:$redis_password@redis:6379/0"
emit rapport-client-keys \
  "storefront=$storefront" \
  "backoffice=$backoffice" \
  "staff=$staff"
