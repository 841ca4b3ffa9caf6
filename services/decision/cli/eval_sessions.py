"""Offline evaluation of the next-item recommender on public session logs (SR-GNN protocol).

Recommending and scoring are separate steps, so the recommender never sees a target:

    python -m services.decision.cli.eval_sessions --train train_sessions.txt --test test.tsv --out recs.txt
    python -m services.decision.cli.eval_sessions --score --test test.tsv --out recs.txt
    python -m services.decision.cli.eval_sessions --make-test-cases clicks_test.tsv --train clicks_train.tsv \
        --out test_cases.tsv

Training replays the sessions in time order through `observe_click`, the path the service uses. Test
lines are `prefix item ids<TAB>target`; only the prefix is read when recommending, and nothing is
learnt from test data (the next line's prefix may hold this line's target).
Training files are either one session per line (item ids separated by spaces, the SR-GNN files) or
`SessionId<TAB>ItemId<TAB>Time` with a header (session-rec / YOOCHOOSE files).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Literal

from tqdm import tqdm

from services.decision.domain.next_item import NextItemRecommender, NextItemSettings

CUTOFF = 20  # HR@20 and MRR@20, as published for SR-GNN and the session-kNN family
TrainFormat = Literal["lines", "tsv"]
MODELS = ("hybrid", "vstan", "sr")


def detect_format(path: Path) -> TrainFormat:
    with path.open() as lines:
        first = lines.readline()
    return "tsv" if first.lower().startswith("sessionid") else "lines"


def read_sessions(path: Path, train_format: TrainFormat) -> list[tuple[float, list[int]]]:
    """Sessions as (time, items in click order), oldest session first."""
    if train_format == "lines":
        # The SR-GNN files carry no timestamps but are in time order: the line number stands in.
        with path.open() as lines:
            return [(float(number), [int(item) for item in line.split()]) for number, line in enumerate(lines)]
    clicks: defaultdict[str, list[tuple[float, int]]] = defaultdict(list)
    with path.open() as lines:
        header = lines.readline().rstrip("\n").split("\t")
        session_column, item_column, time_column = (header.index(name) for name in ("SessionId", "ItemId", "Time"))
        for line in lines:
            fields = line.rstrip("\n").split("\t")
            clicks[fields[session_column]].append((float(fields[time_column]), int(fields[item_column])))
    sessions = []
    for session_clicks in clicks.values():
        session_clicks.sort(key=lambda click: click[0])  # stable: same-second clicks keep file order
        sessions.append((session_clicks[0][0], [item for _, item in session_clicks]))
    sessions.sort(key=lambda session: session[0])
    return sessions


def read_prefixes(path: Path) -> Iterator[list[int]]:
    """The prefixes of a test file; the target column is dropped here and never reaches the model."""
    with path.open() as lines:
        for line in lines:
            prefix, _, _ = line.rstrip("\n").partition("\t")
            yield [int(item) for item in prefix.split()]


def read_targets(path: Path) -> list[int]:
    with path.open() as lines:
        return [int(line.rstrip("\n").rpartition("\t")[2]) for line in lines]


def train(model: NextItemRecommender[int], sessions: Sequence[tuple[float, list[int]]]) -> None:
    for number, (started, items) in enumerate(tqdm(sessions, desc="train", unit="session", mininterval=1.0)):
        session_id = f"train-{number}"
        model.observe_session(session_id, items, started)
        model.end_session(session_id)


def recommend_all(model: NextItemRecommender[int], test: Path, out: Path) -> list[float]:
    """Writes one line of ranked item ids per test line; returns each call's time in seconds."""
    timings: list[float] = []
    with out.open("w") as written:
        for prefix in tqdm(read_prefixes(test), desc="recommend", unit="case", mininterval=1.0):
            started = time.perf_counter()
            ranked = model.recommend(prefix, CUTOFF)
            timings.append(time.perf_counter() - started)
            written.write(" ".join(str(item) for item, _ in ranked) + "\n")
    return timings


def score(out: Path, test: Path) -> tuple[float, float]:
    """HR@20 and MRR@20 in percent."""
    targets = read_targets(test)
    hits = 0
    reciprocal_ranks = 0.0
    with out.open() as lines:
        ranked_lines = [line.split()[:CUTOFF] for line in lines]
    if len(ranked_lines) != len(targets):
        raise SystemExit(f"{out} has {len(ranked_lines)} lines but {test} has {len(targets)}")
    for ranked, target in zip(ranked_lines, targets, strict=True):
        ranked_ids = [int(item) for item in ranked]
        if target in ranked_ids:
            hits += 1
            reciprocal_ranks += 1.0 / (ranked_ids.index(target) + 1)
    return 100.0 * hits / len(targets), 100.0 * reciprocal_ranks / len(targets)


def make_test_cases(clicks: Path, known_from: Path, out: Path) -> int:
    """SR-GNN cases from a click file: for [i1..in], (i1 → i2), (i1 i2 → i3), …; unknown items dropped.

    Items never seen in `known_from` (the training clicks) are removed first, then sessions left with
    fewer than two clicks. Returns the number of cases written.
    """
    known = {item for _, items in read_sessions(known_from, detect_format(known_from)) for item in items}
    cases = 0
    with out.open("w") as written:
        for _, items in read_sessions(clicks, detect_format(clicks)):
            kept = [item for item in items if item in known]
            for end in range(1, len(kept)):
                written.write(" ".join(map(str, kept[:end])) + f"\t{kept[end]}\n")
                cases += 1
    return cases


def settings_for(model: str) -> NextItemSettings:
    """`hybrid` is what the service runs; `vstan` and `sr` are its parts, for comparison.

    `sr` is the sequential-rules baseline of the data README: rules over the next 10 steps weighted
    1/gap, recency-weighted over the session, with an equal-weight repeat boost.
    """
    defaults = NextItemSettings()
    if model == "vstan":
        return replace(defaults, rules_weight=0.0, repeat_weight=0.0)
    if model == "sr":
        return replace(defaults, knn_weight=0.0, rules_weight=1.0, repeat_weight=1.0)
    return defaults


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", type=Path, help="training sessions (lines or SessionId/ItemId/Time TSV)")
    parser.add_argument("--test", type=Path, help="test cases: prefix item ids<TAB>target")
    parser.add_argument("--out", type=Path, required=True, help="recommendations (one line per test case)")
    parser.add_argument("--format", choices=("auto", "lines", "tsv"), default="auto", help="training file format")
    parser.add_argument("--model", choices=MODELS, default="hybrid", help="hybrid (default), or one component")
    parser.add_argument("--score", action="store_true", help="only score OUT against TEST's targets")
    parser.add_argument("--make-test-cases", type=Path, metavar="CLICKS", help="write SR-GNN test cases to OUT")
    args = parser.parse_args(argv)

    if args.make_test_cases:
        if not args.train:
            parser.error("--make-test-cases needs --train to know which items exist")
        cases = make_test_cases(args.make_test_cases, args.train, args.out)
        print(f"wrote {cases} test cases to {args.out}")
        return
    if not args.test:
        parser.error("--test is required")
    if args.score:
        hit_rate, mrr = score(args.out, args.test)
        print(f"HR@{CUTOFF}={hit_rate:.2f} MRR@{CUTOFF}={mrr:.2f}")
        return
    if not args.train:
        parser.error("--train is required to recommend")

    started = time.perf_counter()
    train_format: TrainFormat = detect_format(args.train) if args.format == "auto" else args.format
    model: NextItemRecommender[int] = NextItemRecommender(settings_for(args.model))
    train(model, read_sessions(args.train, train_format))
    trained = time.perf_counter()
    timings = recommend_all(model, args.test, args.out)
    finished = time.perf_counter()
    timings.sort()
    p99 = timings[int(0.99 * (len(timings) - 1))]
    print(
        f"model={args.model} sessions={model.session_count} items={model.item_count} "
        f"train_s={trained - started:.1f} recommend_s={finished - trained:.1f} cases={len(timings)} "
        f"median_ms={1000 * statistics.median(timings):.3f} p99_ms={1000 * p99:.3f}",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
