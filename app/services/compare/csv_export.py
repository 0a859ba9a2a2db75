"""The comparison table as CSV."""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping
from typing import Any


def table_csv(comparison: Mapping[str, Any]) -> str:
    """The table as CSV: the columns' keys as header, numbers written so that they parse back exactly."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    keys = [column["key"] for column in comparison["columns"]]
    writer.writerow(keys)
    for row in comparison["table"]:
        writer.writerow(
            ["" if row.get(k) is None else repr(row[k]) if isinstance(row[k], float) else row[k] for k in keys]
        )
    return out.getvalue()
