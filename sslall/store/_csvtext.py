"""Reading a CSV a person made (an import manifest, a filled-in review file): the one place its
text is decoded and its shape checked, so every mistake in it is one `InputError` line. The
delimiter is the header line's: `,`, or the `;` a spreadsheet in a decimal-comma locale saves,
or a tab.
"""

from __future__ import annotations

import csv
import io
from typing import TextIO

from sslall.errors import InputError

__all__ = ["read_table"]


def read_table(handle: TextIO, what: str) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """The header and the rows of a CSV opened as UTF-8 text, each row with its line number
    (the header is line 1; blank lines are skipped). A row shorter than the header lacks the
    missing columns' keys. The delimiter (`,`, `;` or tab) is sniffed from the header line.

    Raises:
        InputError: the text is not UTF-8, holds a NUL byte or is not valid CSV; the header
            names a column twice; a row has more fields than the header has columns.
    """
    try:
        text = handle.read()
    except UnicodeDecodeError as exc:
        raise InputError(f"{what} is not UTF-8 text (it holds the byte "
                         f"{exc.object[exc.start]:#04x}); save it as UTF-8") from None
    except OSError as exc:
        raise InputError(f"cannot read {what}: {exc.strerror}") from None
    if "\0" in text:
        line = text.count("\n", 0, text.index("\0")) + 1
        raise InputError(f"{what} holds a NUL byte on line {line}; it is not a text CSV")
    try:
        records = [r for r in csv.reader(io.StringIO(text, newline=""), delimiter=_delimiter(text))
                   if r]
    except csv.Error as exc:
        raise InputError(f"{what} is not valid CSV: {exc}") from None
    if not records:
        return [], []
    columns = [c.strip() for c in records[0]]
    twice = sorted({c for c in columns if columns.count(c) > 1})
    if twice:
        raise InputError(f"{what} names column(s) {twice} more than once; name each column once")
    rows = []
    for line, fields in enumerate(records[1:], start=2):
        if len(fields) > len(columns):
            raise InputError(f"{what} line {line} has {len(fields)} fields but the header has "
                             f"{len(columns)} column(s) ({', '.join(columns)})")
        rows.append((line, dict(zip(columns, fields, strict=False))))
    return columns, rows


def _delimiter(text: str) -> str:
    """The delimiter of the first non-blank line (csv.Sniffer, restricted to `,` `;` and tab;
    only the delimiter is taken, quoting stays the standard one); `,` for a one-column header."""
    header = next((line for line in text.splitlines() if line.strip()), "")
    try:
        return csv.Sniffer().sniff(header, delimiters=",;\t").delimiter
    except csv.Error:
        return ","
