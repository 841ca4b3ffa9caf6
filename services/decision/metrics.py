"""What the decision service counts for dashboards: answers by placement and whether degraded
(degraded ratio), why they were degraded, and feedback by kind and lead strategy (click-through
per strategy = CLICK / IMPRESSION)."""

from __future__ import annotations

from typing import Any

from prometheus_client import Counter

from services.common.metrics import MetricGroup, bounded_label


class DecisionMetrics(MetricGroup):
    def __init__(self) -> None:
        self._decisions = Counter(
            "rapport_decision_decisions_total",
            "Decide answers by placement and whether degraded (yes/no)",
            ["placement", "degraded"],
            registry=None,
        )
        self._degraded_reasons = Counter(
            "rapport_decision_degraded_reasons_total",
            "Reasons given in degraded Decide answers (an answer may give several)",
            ["reason"],
            registry=None,
        )
        self._feedback = Counter(
            "rapport_decision_feedback_total",
            "Feedback counted (the first of each kind per decision), by kind and the decision's lead strategy",
            ["kind", "strategy"],
            registry=None,
        )
        super().__init__(self._decisions, self._degraded_reasons, self._feedback)
        self._decided: dict[tuple[str, bool], Any] = {}

    def decided(self, placement: str, degraded_reasons: list[str]) -> None:
        degraded = bool(degraded_reasons)
        counter = self._decided.get((placement, degraded))
        if counter is None:
            counter = self._decisions.labels(bounded_label(placement), "yes" if degraded else "no")
            self._decided[(placement, degraded)] = counter
        counter.inc()
        for reason in degraded_reasons:
            self._degraded_reasons.labels(bounded_label(reason.upper()).lower()).inc()

    def feedback(self, kind: str, lead_strategy: str) -> None:
        self._feedback.labels(bounded_label(kind), bounded_label(lead_strategy, "NONE")).inc()
