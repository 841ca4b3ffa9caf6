"""Decision ids carry what feedback needs to credit (situation key, lead strategy, experiment arm),
signed so that nobody can credit an arm they were not shown; Feedback then needs no lookup."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass

import orjson

_VERSION = "d1"
_SIGNATURE_BYTES = 12


@dataclass(frozen=True, slots=True)
class DecisionRecord:
    person_id: str
    situation: str
    situation_key: str
    lead_strategy: str
    experiment_id: str
    arm: str
    time_ms: int
    nonce: str


class InvalidDecisionId(ValueError):
    pass


class DecisionIds:
    def __init__(self, secret: bytes) -> None:
        # The keyed state, made once: each id copies it instead of keying a new HMAC.
        self._keyed = hmac.new(secret, digestmod=hashlib.sha256)

    def _sign(self, body: bytes) -> str:
        signer = self._keyed.copy()
        signer.update(body)
        return base64.urlsafe_b64encode(signer.digest()[:_SIGNATURE_BYTES]).decode().rstrip("=")

    def issue(self, record: DecisionRecord) -> str:
        payload = [
            record.person_id,
            record.situation,
            record.situation_key,
            record.lead_strategy,
            record.experiment_id,
            record.arm,
            record.time_ms,
            record.nonce,
        ]
        body = base64.urlsafe_b64encode(orjson.dumps(payload)).decode().rstrip("=")
        return f"{_VERSION}.{body}.{self._sign(body.encode())}"

    def read(self, decision_id: str) -> DecisionRecord:
        version, _, rest = decision_id.partition(".")
        body, _, signature = rest.partition(".")
        if version != _VERSION or not body or not signature:
            raise InvalidDecisionId("not a decision id")
        if not hmac.compare_digest(signature, self._sign(body.encode())):
            raise InvalidDecisionId("the decision id's signature does not match")
        try:
            fields = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
            return DecisionRecord(*fields)
        except (ValueError, TypeError) as error:
            raise InvalidDecisionId("the decision id is damaged") from error


def new_nonce() -> str:
    return secrets.token_hex(4)
