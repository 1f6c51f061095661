"""``adaptbed envs``: the table of task families (the same rows as README's table)."""

from __future__ import annotations

import json
import sys
from typing import Sequence

from experiments.cliutil import Parser
from envs.registry import markdown_table, table_rows


def format_table(rows: list[dict[str, str]]) -> str:
    """Fixed-width text table of ``rows`` (all dicts with the same keys)."""
    header = list(rows[0])
    widths = [max(len(h), *(len(r[h]) for r in rows)) for h in header]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths])] +
                     [line([r[h] for h in header]) for r in rows])


def main(argv: Sequence[str] | None = None) -> int:
    p = Parser(prog="adaptbed envs", description="List the task families.")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="print JSON")
    fmt.add_argument("--markdown", action="store_true", help="print README's Markdown table")
    args = p.parse_args(argv)
    if args.json:
        print(json.dumps(table_rows(), indent=2))
    elif args.markdown:
        print(markdown_table())
    else:
        print(format_table(table_rows()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
