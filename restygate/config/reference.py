"""
The README's configuration table, made from the key table so the two
cannot drift apart (a test compares them).  C{python -m
restygate.config.reference} prints it, to paste after changing a key.
"""

from __future__ import annotations

import sys
from typing import List

from restygate.config.keys import KEYS

__all__ = ["markdown_table"]


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def markdown_table() -> str:
    """
    One row per key: name, default, on reload (live or restart), meaning.
    """
    rows: List[str] = [
        "| key | default | on reload | meaning |",
        "|---|---|---|---|",
    ]
    for key in KEYS.values():
        name = f"`{key.name}`" + (" (repeatable)" if key.form == "list" else "")
        rows.append(
            f"| {name} | {_cell(key.default_text())} | {'live' if key.live else 'restart'} | {_cell(key.help)} |"
        )
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    sys.stdout.write(markdown_table())
