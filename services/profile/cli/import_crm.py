"""Imports CRM attributes (loyalty card, tier, birthday, ...) from a CSV file through ProfileService.ImportCrm.

`python -m services.profile.cli.import_crm customers.csv [--id-column customer_id] [--id-type CUSTOMER_ID]`

The CSV has a header line. One column identifies the person (a customer id by default; with
`--id-type EMAIL_SHA256` a raw e-mail is fine, the server hashes it); every other non-empty cell
becomes an attribute named after its column, lower-cased with anything outside [a-z0-9_] turned
into '_' and cut at 64 characters. Empty cells are left out rather than sent empty, because an
empty value removes the attribute. The parsing is pure and unit-tested in tests/unit/test_profile_cli.py.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import re
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn, TextIO, cast

import grpc
from tqdm import tqdm

from rapport.common.v1 import identifier_pb2
from rapport.profile.v1 import profile_service_pb2 as pb
from rapport.profile.v1 import profile_service_pb2_grpc as pb_grpc
from services.profile.cli import (
    CallFailed,
    add_connection_arguments,
    auth_metadata,
    batch_size_argument,
    call_with_retry,
    read_api_key,
    status_name,
)

ATTRIBUTE_NAME_MAX_LENGTH = 64  # SetAttributes: names are [a-z0-9_]{1,64}
SHOWN_PROBLEMS = 5
_NOT_NAME_CHARACTER = re.compile(r"[^a-z0-9_]")
_IDENTIFIER_TYPE_PREFIX = "IDENTIFIER_TYPE_"
# Every identifier type a CRM could hold, by its short name ("CUSTOMER_ID", "EMAIL_SHA256", ...).
IDENTIFIER_TYPES = {
    name.removeprefix(_IDENTIFIER_TYPE_PREFIX): value
    for name, value in identifier_pb2.IdentifierType.items()
    if value != identifier_pb2.IDENTIFIER_TYPE_UNSPECIFIED
}


class BadHeader(ValueError):
    """The CSV header cannot be turned into attribute names."""


def attribute_name(column: str) -> str:
    """'Loyalty Card' -> 'loyalty_card': lower-cased, other characters -> '_', at most 64 characters."""
    return _NOT_NAME_CHARACTER.sub("_", column.strip().lower())[:ATTRIBUTE_NAME_MAX_LENGTH]


def attribute_names(header: Sequence[str]) -> list[str]:
    """The header's columns as attribute names; two columns may not end up with the same name."""
    names = [attribute_name(column) for column in header]
    for position, name in enumerate(names):
        if not name:
            raise BadHeader(f"column {position + 1} has no name")
        if names.index(name) != position:
            raise BadHeader(f"columns {names.index(name) + 1} and {position + 1} both become attribute {name!r}")
    return names


def identifier_type(text: str) -> identifier_pb2.IdentifierType.ValueType:
    """'CUSTOMER_ID', 'email_sha256' or 'IDENTIFIER_TYPE_COOKIE' -> the IdentifierType number."""
    name = text.strip().upper().removeprefix(_IDENTIFIER_TYPE_PREFIX)
    if name not in IDENTIFIER_TYPES:
        raise argparse.ArgumentTypeError(f"choose among {', '.join(IDENTIFIER_TYPES)}")
    return IDENTIFIER_TYPES[name]


class RowProblem(ValueError):
    """A CSV row that cannot become a CRM record; the message never quotes the row (it may be PII)."""


def crm_record(
    names: Sequence[str], cells: Sequence[str], id_column: str, id_type: identifier_pb2.IdentifierType.ValueType
) -> pb.CrmRecord:
    """One CSV row (attribute names from the header, the row's cells) -> a CrmRecord.

    Cells are trimmed; empty cells are left out. A row missing its identifier, with no attribute
    at all, or with more non-empty cells than the header has columns raises RowProblem.
    """
    if any(cell.strip() for cell in cells[len(names) :]):
        raise RowProblem(f"{len(cells)} cells but the header has {len(names)} columns")
    values = {name: cell.strip() for name, cell in zip(names, cells, strict=False)}
    identifier = values.pop(id_column, "")
    if not identifier:
        raise RowProblem(f"no {id_column}")
    attributes = {name: value for name, value in values.items() if value}
    if not attributes:
        raise RowProblem("no attribute")
    return pb.CrmRecord(
        identifier=identifier_pb2.Identifier(type=id_type, value=identifier),
        attributes=attributes,
    )


@dataclass
class ImportTally:
    """What the import did, and the first few problems worth showing."""

    imported: int = 0
    rejected: int = 0
    skipped: int = 0
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)

    def note(self, problem: str) -> None:
        if len(self.problems) < SHOWN_PROBLEMS:
            self.problems.append(problem)
            tqdm.write(problem, file=sys.stderr)

    def summary(self) -> str:
        return f"imported={self.imported} rejected={self.rejected} skipped={self.skipped} seconds={self.seconds:.1f}"


@dataclass(frozen=True, slots=True)
class NumberedRecord:
    line: int  # the CSV line the record came from, to point at it in messages
    record: pb.CrmRecord


def header_names(rows: Iterator[list[str]], id_column: str) -> list[str]:
    """Read the header line: the attribute names of the columns, which must include `id_column`."""
    header = next(rows, None)
    if header is None:
        raise BadHeader("the file is empty")
    names = attribute_names(header)
    if id_column not in names:
        raise BadHeader(f"no {id_column!r} column; the columns are {', '.join(names)}")
    return names


def open_csv(path: Path) -> TextIO:
    return path.open(encoding="utf-8-sig", newline="")  # -sig: spreadsheets often start with a BOM


def check_header(path: Path, id_column: str) -> None:
    """Fail before connecting (and before any progress bar) when the header is unusable."""
    with open_csv(path) as stream:
        header_names(csv.reader(stream), id_column)


def read_records(
    path: Path, id_column: str, id_type: identifier_pb2.IdentifierType.ValueType, tally: ImportTally
) -> Iterator[NumberedRecord | None]:
    """The file's records; None for a row that was skipped (counted and noted in `tally`)."""
    with open_csv(path) as stream:
        rows = csv.reader(stream)
        names = header_names(rows, id_column)
        for cells in rows:
            if not any(cell.strip() for cell in cells):
                continue  # blank lines are not rows
            try:
                yield NumberedRecord(rows.line_num, crm_record(names, cells, id_column, id_type))
            except RowProblem as problem:
                tally.skipped += 1
                tally.note(f"skipped line {rows.line_num}: {problem}")
                yield None


def count_rows(path: Path) -> int:
    with open_csv(path) as stream:
        return max(0, sum(1 for cells in csv.reader(stream) if any(cell.strip() for cell in cells)) - 1)


async def import_records(
    stub: pb_grpc.ProfileServiceAsyncStub,
    records: Iterator[NumberedRecord | None],
    tally: ImportTally,
    *,
    total: int,
    batch_size: int,
    metadata: tuple[tuple[str, str], ...],
    timeout: float,
) -> None:
    """Send the records in ImportCrm batches, one batch at a time.

    One at a time on purpose: when a person appears on two lines, the later line must win, which
    concurrent batches would not guarantee. A CRM file is small next to the event stream.
    """

    async def send(batch: list[NumberedRecord], progress: tqdm[NoReturn]) -> None:
        request = pb.ImportCrmRequest(records=[numbered.record for numbered in batch])

        async def import_crm() -> pb.ImportCrmResponse:
            response: pb.ImportCrmResponse = await stub.ImportCrm(request, metadata=metadata, timeout=timeout)
            return response

        # Setting the same attributes twice is harmless, so a batch that may not have landed is resent.
        response = await call_with_retry(import_crm, what=f"ImportCrm of {len(batch)} records")
        tally.imported += response.imported_count
        for numbered, status in zip(batch, response.statuses, strict=False):
            if status.code != 0:
                tally.rejected += 1
                tally.note(f"rejected line {numbered.line}: {status_name(status.code)}: {status.message}")
        if not response.statuses:  # a server that reports only the count
            tally.rejected += len(batch) - response.imported_count
        progress.update(len(batch))

    started = time.perf_counter()
    batch: list[NumberedRecord] = []
    with tqdm(total=total, desc="crm", unit="row", dynamic_ncols=True) as progress:
        try:
            for numbered in records:
                if numbered is None:
                    progress.update(1)
                    continue
                batch.append(numbered)
                if len(batch) == batch_size:
                    await send(batch, progress)
                    batch = []
            if batch:
                await send(batch, progress)
        finally:
            tally.seconds = time.perf_counter() - started


def parse_arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m services.profile.cli.import_crm",
        description="Import CRM attributes from a CSV file (with a header line) through ProfileService.ImportCrm.",
    )
    parser.add_argument("file", type=Path, help="the CSV file")
    add_connection_arguments(parser)
    parser.add_argument("--id-column", default="customer_id", help="the column identifying the person")
    parser.add_argument(
        "--id-type",
        type=identifier_type,
        default=identifier_pb2.IDENTIFIER_TYPE_CUSTOMER_ID,
        help=f"what the id column holds: {', '.join(IDENTIFIER_TYPES)} (default CUSTOMER_ID)",
    )
    parser.add_argument("--batch-size", type=batch_size_argument, default=500, help="records per ImportCrm (1..1000)")
    return parser.parse_args(argv)


async def run_import(arguments: argparse.Namespace, tally: ImportTally) -> None:
    id_column = attribute_name(arguments.id_column)
    check_header(arguments.file, id_column)
    metadata = auth_metadata(read_api_key(arguments.api_key, arguments.api_key_file))
    records = read_records(arguments.file, id_column, arguments.id_type, tally)
    async with grpc.aio.insecure_channel(arguments.address) as channel:
        # The async stub exists only in the generated .pyi (the overload for an aio channel); grpc is untyped.
        stub = cast("pb_grpc.ProfileServiceAsyncStub", pb_grpc.ProfileServiceStub(channel))
        await import_records(
            stub,
            records,
            tally,
            total=count_rows(arguments.file),
            batch_size=arguments.batch_size,
            metadata=metadata,
            timeout=arguments.timeout,
        )


def main(argv: Sequence[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    if not arguments.file.is_file():
        print(f"no such file: {arguments.file}", file=sys.stderr)
        return 2
    tally = ImportTally()
    try:
        asyncio.run(run_import(arguments, tally))
    except BadHeader as problem:
        print(f"cannot import {arguments.file}: {problem}", file=sys.stderr)
        return 2
    except (UnicodeDecodeError, csv.Error) as problem:
        print(f"cannot read {arguments.file} as UTF-8 CSV: {problem}", file=sys.stderr)
        return 2
    except CallFailed as failure:
        print(f"import stopped: {failure}", file=sys.stderr)
        print(tally.summary())
        return 1
    except KeyboardInterrupt:
        print("import interrupted", file=sys.stderr)
        print(tally.summary())
        return 130
    print(tally.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
