"""Next-item recommendations for a shopping session: session-kNN (VSTAN) blended with sequential rules
and re-views. Learns on every click, with no batch retraining, and keeps its memory bounded.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np
import numpy.typing as npt

Item = TypeVar("Item", bound=Hashable)
IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]

NO_ITEM = -1  # padding of the session matrix; also indexes the always-False tail of the query mask
_EMPTY_INTS: IntArray = np.zeros(0, dtype=np.int64)
_EMPTY_FLOATS: FloatArray = np.zeros(0, dtype=np.float64)


@dataclass(frozen=True, slots=True)
class NextItemSettings:
    """Model size and weights. Defaults follow the published VSTAN/SR designs, not values fitted to one shop.

    The memory of the model is about `max_sessions * (max_session_items * 8 + rule_window * 4 + 40)` bytes
    for the session index (≈ 48 MB with the defaults), plus at most `max_rules_per_item` rules and
    `2 * sample_size` session references per catalogue item.
    """

    # Session-kNN (Ludewig et al. 2021, VSTAN): how many neighbour sessions vote, among how many of the
    # most recent sessions that share an item with the current one: the defaults documented in the
    # reference implementation (session-rec, algorithms/knn/vstan.py).
    neighbours: int = 100
    sample_size: int = 5000
    # Sessions kept in the index, oldest evicted first (a ring): bounds memory in a service that never stops.
    max_sessions: int = 200_000
    # Distinct items of one session kept in the index; longer sessions (often bots) stop growing there.
    max_session_items: int = 20
    # Sequential rules (Ludewig & Jannach 2018): a click points to the items clicked in the next
    # `rule_window` steps with weight 1/gap.
    rule_window: int = 10
    # Successors kept per item; the weakest are pruned once a list doubles past the cap.
    max_rules_per_item: int = 500
    # Scale, in clicks, of every position decay (recency in the current session, distance to the shared item
    # in a neighbour). None: the mean session length seen so far, so "recent" means "within one typical
    # session" whatever the shop, instead of a constant fitted to one data set.
    position_decay: float | None = None
    # VSTAN's IDF boost, score * (1 + idf_weight * idf): a neighbour's rare items say more about this
    # session than its best-sellers. 1 gives the IDF term the same say as the plain vote.
    idf_weight: float = 1.0
    # Each signal is scaled to [0, 1] and added with these weights. The neighbours lead; the rules and
    # the re-view of the session's own recent items (weighted by recency) are secondary evidence. The
    # quarter weights were picked from {0, 1/4, 1/2, 1} on the last 10% of the *training* sessions of
    # two unrelated shops (DIGINETICA, YOOCHOOSE), where they agreed; test sets were not used to choose.
    knn_weight: float = 1.0
    rules_weight: float = 0.25
    repeat_weight: float = 0.25
    # Only the most recent clicks of a session are used as the query: older ones weigh ~exp(-10) anyway.
    query_clicks: int = 50
    # A click this long (seconds) after the previous one of the same session id opens a new session: the
    # 30-minute inactivity rule of web analytics, for storefronts that reuse a cookie as session id.
    session_timeout: float | None = 1800.0

    def __post_init__(self) -> None:
        positive = {
            "sample_size": self.sample_size,
            "max_sessions": self.max_sessions,
            "max_session_items": self.max_session_items,
            "rule_window": self.rule_window,
            "max_rules_per_item": self.max_rules_per_item,
            "query_clicks": self.query_clicks,
        }
        for name, value in positive.items():
            if value <= 0:
                raise ValueError(f"{name} must be positive, got {value}")
        if self.neighbours < 0:
            raise ValueError(f"neighbours must be >= 0, got {self.neighbours}")
        if self.session_timeout is not None and self.session_timeout <= 0:
            raise ValueError(f"session_timeout must be positive, got {self.session_timeout}")
        if self.position_decay is not None and self.position_decay <= 0:
            raise ValueError(f"position_decay must be positive, got {self.position_decay}")
        if min(self.idf_weight, self.knn_weight, self.rules_weight, self.repeat_weight) < 0:
            raise ValueError("idf_weight, knn_weight, rules_weight and repeat_weight must be >= 0")


class NextItemRecommender(Generic[Item]):
    """Session-based next-item recommender, updated on every click.

    Items are any hashable product id (ints in offline evaluation, product-id strings in the service);
    they are mapped to dense ints inside. The catalogue vocabulary grows with the items seen (a shop's
    catalogue is bounded); sessions and rules are capped by `NextItemSettings`.

    `recommend` blends three scores, each scaled to [0, 1]:
    - VSTAN session-kNN (Ludewig et al. 2021): among the most recent sessions sharing items with the
      current one, the `neighbours` most similar (cosine, the session's recent clicks weighing more) vote
      for their items, more for items clicked close to the shared one and for rare (high IDF) items;
    - sequential rules: what followed the session's recent clicks within `rule_window` steps;
    - re-view: the session's own items by recency (~20% of next clicks in public click logs are
      re-views of a product already seen in the session).
    Items already in the session may thus come back, unless excluded. With no usable history, the most
    clicked items.
    Not thread-safe: one instance per event loop, as the service uses it.
    """

    def __init__(self, settings: NextItemSettings | None = None) -> None:
        self.settings = settings or NextItemSettings()
        # Item vocabulary: external id <-> dense index.
        self._index_of: dict[Item, int] = {}
        self._items: list[Item] = []
        self._item_clicks: IntArray = np.zeros(1024, dtype=np.int64)
        self._sessions_with_item: IntArray = np.zeros(1024, dtype=np.int64)
        # True for the items of the query being scored; one spare False cell that NO_ITEM (-1) hits.
        self._in_query = np.zeros(1025, dtype=bool)
        # Inverted index item -> sequence numbers of sessions holding it, oldest first, trimmed to the
        # newest `sample_size` once it holds twice that many.
        self._postings: list[IntArray] = []
        self._posting_lengths: list[int] = []
        # Session ring: a session's sequence number `seq` lives in slot seq % max_sessions while alive.
        # The arrays grow by doubling up to max_sessions, so a fresh service holds only what it uses.
        self._next_seq = 0
        self._slot_seq: IntArray = _EMPTY_INTS
        self._slot_session_id: list[str | None] = []
        self._slot_clicks: IntArray = _EMPTY_INTS
        self._slot_distinct: IntArray = _EMPTY_INTS
        self._slot_items = np.zeros((0, self.settings.max_session_items), dtype=np.int32)
        self._slot_last_position = np.zeros((0, self.settings.max_session_items), dtype=np.int32)
        self._slot_recent = np.zeros((0, self.settings.rule_window), dtype=np.int32)
        self._slot_time: FloatArray = _EMPTY_FLOATS
        self._seq_of_session: dict[str, int] = {}
        self._total_clicks = 0
        self._total_sessions = 0
        # Rules: successor -> weight per item, and their array form cached until the item's rules change.
        self._rules: list[dict[int, float]] = []
        self._rule_arrays: list[tuple[IntArray, FloatArray] | None] = []
        self._popular: IntArray = _EMPTY_INTS
        self._popular_at_clicks = -1

    # -----------------------------------------------------------------------------------------
    # Learning
    # -----------------------------------------------------------------------------------------

    @property
    def item_count(self) -> int:
        return len(self._items)

    @property
    def session_count(self) -> int:
        """Sessions seen since start, evicted ones included."""
        return self._total_sessions

    def knows(self, item: Item) -> bool:
        return item in self._index_of

    def observe_session(self, session_id: str, items: Iterable[Item], timestamp: float) -> None:
        """Feeds a whole session, click by click, all at `timestamp` (offline replay of past sessions)."""
        for item in items:
            self.observe_click(session_id, item, timestamp)

    def observe_click(self, session_id: str, item: Item, timestamp: float) -> None:
        """Appends one click to a session and updates the model at once; `timestamp` in seconds."""
        index = self._intern(item)
        seq = self._seq_of_session.get(session_id)
        timeout = self.settings.session_timeout
        if seq is not None and timeout is not None:
            idle = timestamp - float(self._slot_time[seq % self.settings.max_sessions])
            seq = None if idle > timeout else seq
        if seq is None:
            seq = self._start_session(session_id)
        slot = seq % self.settings.max_sessions
        clicks = int(self._slot_clicks[slot])
        window = self.settings.rule_window
        recent = self._slot_recent[slot]
        if self.settings.rules_weight > 0:  # unused rules would only cost memory
            for gap in range(1, min(clicks, window) + 1):
                self._add_rule(int(recent[(clicks - gap) % window]), index, 1.0 / gap)
        recent[clicks % window] = index
        position = clicks + 1
        self._slot_clicks[slot] = position
        self._slot_time[slot] = timestamp
        distinct = int(self._slot_distinct[slot])
        row = self._slot_items[slot]
        seen_at = np.flatnonzero(row[:distinct] == index)
        if seen_at.size:
            self._slot_last_position[slot, seen_at[0]] = position
        elif distinct < self.settings.max_session_items:
            row[distinct] = index
            self._slot_last_position[slot, distinct] = position
            self._slot_distinct[slot] = distinct + 1
            self._add_posting(index, seq)
            self._sessions_with_item[index] += 1
        self._item_clicks[index] += 1
        self._total_clicks += 1

    def end_session(self, session_id: str) -> None:
        """Forgets the session's id so a reused id starts afresh; its clicks stay in the index."""
        self._seq_of_session.pop(session_id, None)

    def _intern(self, item: Item) -> int:
        index = self._index_of.get(item)
        if index is not None:
            return index
        index = len(self._items)
        self._index_of[item] = index
        self._items.append(item)
        self._postings.append(_EMPTY_INTS)
        self._posting_lengths.append(0)
        self._rules.append({})
        self._rule_arrays.append(None)
        if index >= len(self._item_clicks):
            grown = 2 * len(self._item_clicks)
            self._item_clicks = np.concatenate([self._item_clicks, np.zeros(grown - len(self._item_clicks), np.int64)])
            self._sessions_with_item = np.concatenate(
                [self._sessions_with_item, np.zeros(grown - len(self._sessions_with_item), np.int64)]
            )
            self._in_query = np.zeros(grown + 1, dtype=bool)
        return index

    def _start_session(self, session_id: str) -> int:
        seq = self._next_seq
        self._next_seq += 1
        self._total_sessions += 1
        slot = seq % self.settings.max_sessions
        if slot == len(self._slot_seq):
            self._grow_slots()
        evicted_id = self._slot_session_id[slot]
        if evicted_id is not None and self._seq_of_session.get(evicted_id) == self._slot_seq[slot]:
            del self._seq_of_session[evicted_id]
        # Postings of the evicted session stay behind and are skipped at query time (slot_seq differs).
        self._slot_seq[slot] = seq
        self._slot_session_id[slot] = session_id
        self._slot_clicks[slot] = 0
        self._slot_distinct[slot] = 0
        self._slot_items[slot] = NO_ITEM
        self._seq_of_session[session_id] = seq
        return seq

    def _grow_slots(self) -> None:
        old = len(self._slot_seq)
        added = min(max(1024, old), self.settings.max_sessions - old)
        width = self.settings.max_session_items
        self._slot_seq = np.concatenate([self._slot_seq, np.full(added, -1, dtype=np.int64)])
        self._slot_session_id.extend([None] * added)
        self._slot_clicks = np.concatenate([self._slot_clicks, np.zeros(added, dtype=np.int64)])
        self._slot_distinct = np.concatenate([self._slot_distinct, np.zeros(added, dtype=np.int64)])
        self._slot_items = np.concatenate([self._slot_items, np.full((added, width), NO_ITEM, dtype=np.int32)])
        self._slot_last_position = np.concatenate([self._slot_last_position, np.zeros((added, width), np.int32)])
        recent = np.zeros((added, self.settings.rule_window), dtype=np.int32)
        self._slot_recent = np.concatenate([self._slot_recent, recent])
        self._slot_time = np.concatenate([self._slot_time, np.zeros(added, dtype=np.float64)])

    def _add_posting(self, index: int, seq: int) -> None:
        postings = self._postings[index]
        length = self._posting_lengths[index]
        if length == len(postings):
            keep = self.settings.sample_size
            if length >= 2 * keep:
                # Only the newest `sample_size` sessions of an item can ever be sampled as neighbours.
                postings[:keep] = postings[length - keep : length]
                length = keep
            else:
                grown = np.empty(min(max(4, 2 * length), 2 * keep), dtype=np.int64)
                grown[:length] = postings[:length]
                postings = grown
                self._postings[index] = postings
        postings[length] = seq
        self._posting_lengths[index] = length + 1

    def _add_rule(self, earlier: int, later: int, weight: float) -> None:
        successors = self._rules[earlier]
        successors[later] = successors.get(later, 0.0) + weight
        self._rule_arrays[earlier] = None
        cap = self.settings.max_rules_per_item
        if len(successors) > 2 * cap:
            strongest = sorted(successors.items(), key=lambda rule: -rule[1])[:cap]
            self._rules[earlier] = dict(strongest)

    # -----------------------------------------------------------------------------------------
    # Recommending
    # -----------------------------------------------------------------------------------------

    def recommend(
        self,
        session_items: Sequence[Item],
        count: int = 20,
        exclude: Collection[Item] = (),
        session_id: str | None = None,
    ) -> list[tuple[Item, float]]:
        """The `count` most likely next items after the session's clicks (oldest first), best first.

        Scores are in [0, knn_weight + rules_weight + repeat_weight]. Unknown items in the session are
        ignored; when nothing is known of the session, or too few items score, the list is topped up with
        the most clicked items at score 0. `exclude` items never come back. Give `session_id` when the
        session is itself being observed, so that it is not its own neighbour.
        """
        if count <= 0 or not self._items:
            return []
        recent_clicks = session_items[-self.settings.query_clicks :]
        length = len(recent_clicks)
        last_position: dict[int, int] = {}
        for position, item in enumerate(recent_clicks, start=1):
            index = self._index_of.get(item)
            if index is not None:
                last_position[index] = position
        excluded = [index for item in exclude if (index := self._index_of.get(item)) is not None]
        candidates, scores = _EMPTY_INTS, _EMPTY_FLOATS
        if last_position:
            decay = self._position_decay()
            query_items = np.fromiter(last_position.keys(), dtype=np.int64, count=len(last_position))
            positions = np.fromiter(last_position.values(), dtype=np.float64, count=len(last_position))
            query_weights = np.exp((positions - length) / decay)
            settings = self.settings
            parts: list[tuple[IntArray, FloatArray]] = []
            if settings.knn_weight > 0 and settings.neighbours > 0:
                own_seq = self._seq_of_session.get(session_id) if session_id is not None else None
                neighbour_votes = self._neighbour_scores(query_items, query_weights, decay, own_seq)
                parts.append(_scaled(neighbour_votes, settings.knn_weight))
            if settings.rules_weight > 0:
                parts.append(_scaled(self._rule_scores(recent_clicks, decay), settings.rules_weight))
            if settings.repeat_weight > 0:
                parts.append(_scaled((query_items, query_weights), settings.repeat_weight))
            candidates, scores = _sum_by_item(parts)
        if excluded and candidates.size:
            in_excluded = self._in_query  # the scratch mask, free between queries
            in_excluded[excluded] = True
            keep = ~in_excluded[candidates]
            in_excluded[excluded] = False
            candidates, scores = candidates[keep], scores[keep]
        order = _top(scores, candidates, count)
        ranked = [(self._items[int(candidates[position])], float(scores[position])) for position in order]
        if len(ranked) < count:
            taken = set(candidates[order].tolist()) | set(excluded)
            for index in self._most_clicked(count + len(taken)):
                if len(ranked) == count:
                    break
                if index not in taken:
                    ranked.append((self._items[index], 0.0))
        return ranked

    def _position_decay(self) -> float:
        if self.settings.position_decay is not None:
            return self.settings.position_decay
        return max(1.0, self._total_clicks / max(1, self._total_sessions))

    def _neighbour_scores(
        self, query_items: IntArray, query_weights: FloatArray, decay: float, own_seq: int | None
    ) -> tuple[IntArray, FloatArray]:
        """VSTAN: sample recent sessions sharing an item, keep the most similar, let them vote."""
        sample_size = self.settings.sample_size
        capacity = self.settings.max_sessions
        seq_parts: list[IntArray] = []
        part_lengths: list[int] = []
        for index in query_items.tolist():
            length = self._posting_lengths[index]
            seqs = self._postings[index][max(0, length - sample_size) : length]
            seq_parts.append(seqs)
            part_lengths.append(len(seqs))
        if not any(part_lengths):
            return _EMPTY_INTS, _EMPTY_FLOATS
        seqs = np.concatenate(seq_parts)
        weights = query_weights.repeat(part_lengths)
        alive = self._slot_seq[seqs % capacity] == seqs
        if own_seq is not None:
            alive &= seqs != own_seq
        if not alive.all():
            seqs, weights = seqs[alive], weights[alive]
        if not seqs.size:
            return _EMPTY_INTS, _EMPTY_FLOATS
        sessions, owner = _unique_with_inverse(seqs)
        if len(sessions) > sample_size:
            # Sequence numbers grow with time: the sample is the newest `sample_size` candidates.
            first = len(sessions) - sample_size
            kept = owner >= first
            sessions, owner, weights = sessions[first:], owner[kept] - first, weights[kept]
        slots = sessions % capacity
        overlap = np.bincount(owner, weights=weights, minlength=len(sessions))
        query_norm = math.sqrt(float(np.dot(query_weights, query_weights)))
        similarity = overlap / (np.sqrt(self._slot_distinct[slots]) * query_norm)
        # VSTAN's "ipw": a neighbour matched only through an old click of this session counts less.
        freshest_match = np.zeros(len(sessions))
        np.maximum.at(freshest_match, owner, weights)
        vote = similarity * freshest_match
        if len(sessions) > self.settings.neighbours:
            nearest = np.argpartition(-similarity, self.settings.neighbours - 1)[: self.settings.neighbours]
            slots, vote = slots[nearest], vote[nearest]
        items = self._slot_items[slots]
        positions = self._slot_last_position[slots]
        in_query = self._in_query
        in_query[query_items] = True
        shared = in_query[items]
        in_query[query_items] = False
        anchor = np.max(np.where(shared, positions, 0), axis=1)
        nearness = np.exp(-np.abs(positions - anchor[:, None]) / decay)
        valid = items != NO_ITEM
        candidates, voter = _unique_with_inverse(items[valid])
        votes = (vote[:, None] * nearness)[valid]
        scores = np.asarray(np.bincount(voter, weights=votes, minlength=len(candidates)), dtype=np.float64)
        candidates = candidates.astype(np.int64)
        if self.settings.idf_weight > 0:
            idf = np.log(self._total_sessions / np.maximum(1, self._sessions_with_item[candidates]))
            scores *= 1.0 + self.settings.idf_weight * idf
        return candidates, scores

    def _rule_scores(self, recent_clicks: Sequence[Item], decay: float) -> tuple[IntArray, FloatArray]:
        """Successors of the session's recent clicks, the latest clicks counting most."""
        length = len(recent_clicks)
        target_parts: list[IntArray] = []
        weight_parts: list[FloatArray] = []
        first = max(0, length - self.settings.rule_window)
        for position in range(first + 1, length + 1):
            index = self._index_of.get(recent_clicks[position - 1])
            if index is None or not self._rules[index]:
                continue
            targets, weights = self._rule_array(index)
            target_parts.append(targets)
            weight_parts.append(weights * math.exp((position - length) / decay))
        if not target_parts:
            return _EMPTY_INTS, _EMPTY_FLOATS
        return _sum_by_item(list(zip(target_parts, weight_parts, strict=True)))

    def _rule_array(self, index: int) -> tuple[IntArray, FloatArray]:
        cached = self._rule_arrays[index]
        if cached is None:
            successors = self._rules[index]
            targets = np.fromiter(successors.keys(), dtype=np.int64, count=len(successors))
            weights = np.fromiter(successors.values(), dtype=np.float64, count=len(successors))
            cached = (targets, weights)
            self._rule_arrays[index] = cached
        return cached

    def _most_clicked(self, count: int) -> list[int]:
        # Recomputed at most once per 1 000 clicks: a best-seller list does not move faster than that.
        stale = self._total_clicks - self._popular_at_clicks >= 1000 or self._popular_at_clicks < 0
        if stale or len(self._popular) < min(count, len(self._items)):
            clicks = self._item_clicks[: len(self._items)]
            wanted = min(max(count, 100), len(clicks))
            top = np.argpartition(-clicks, wanted - 1)[:wanted] if wanted < len(clicks) else np.arange(len(clicks))
            self._popular = top[np.lexsort((top, -clicks[top]))]
            self._popular_at_clicks = self._total_clicks
        return [int(index) for index in self._popular[:count]]


def _scaled(part: tuple[IntArray, FloatArray], weight: float) -> tuple[IntArray, FloatArray]:
    items, scores = part
    if not scores.size:
        return part
    top = float(scores.max())
    return items, scores * (weight / top) if top > 0 else scores


def _sum_by_item(parts: Sequence[tuple[IntArray, FloatArray]]) -> tuple[IntArray, FloatArray]:
    parts = [part for part in parts if part[0].size]
    if not parts:
        return _EMPTY_INTS, _EMPTY_FLOATS
    if len(parts) == 1:
        return parts[0]
    items, owner = _unique_with_inverse(np.concatenate([part[0] for part in parts]))
    weights = np.concatenate([part[1] for part in parts])
    scores = np.asarray(np.bincount(owner, weights=weights, minlength=len(items)), dtype=np.float64)
    return items.astype(np.int64), scores


def _unique_with_inverse(values: npt.NDArray[np.integer]) -> tuple[IntArray, IntArray]:
    """`np.unique(values, return_inverse=True)` for a 1-d integer array, without its generic
    checks, which cost more than the work on the few hundred values of a query."""
    order = values.argsort(kind="stable")
    ordered = values[order]
    starts = np.empty(len(ordered), dtype=bool)
    starts[:1] = True
    np.not_equal(ordered[1:], ordered[:-1], out=starts[1:])
    inverse = np.empty(len(ordered), dtype=np.int64)
    inverse[order] = starts.cumsum() - 1
    return ordered[starts].astype(np.int64, copy=False), inverse


def _top(scores: FloatArray, items: IntArray, count: int) -> IntArray:
    """Positions of the `count` best scores, ties broken by the item's index so that runs repeat."""
    if len(scores) > count:
        # Take ties at the cut-off with the rest so that the tie-break below sees all of them.
        threshold = np.partition(scores, len(scores) - count)[len(scores) - count]
        chosen = np.flatnonzero(scores >= threshold)
    else:
        chosen = np.arange(len(scores))
    order = chosen[np.lexsort((items[chosen], -scores[chosen]))]
    return order[:count]
