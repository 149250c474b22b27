"""`-k` expressions over case and item ids: pytest's own matcher, with `@` allowed (case ids contain it, and pytest's
`-k` rejects it). Used wherever a command selects cases (the gate, `cases`, `plan`, `fetch`, the results store)."""

from __future__ import annotations

import functools

from _pytest.mark.expression import Expression  # pytest's -k parser; its public API has no equivalent

from sae_bench.errors import BadInput

AT = "__at__"
"""What `@` becomes before pytest's parser sees an expression or a name."""


class Selection:
    """`-k` semantics, with `@` allowed in names (pytest's own `-k` rejects it, and case ids contain it)."""

    def __init__(self, expression: str):
        try:
            self.expression = Expression.compile(expression.replace("@", AT))
        except Exception as err:  # noqa: BLE001 - pytest's ParseError is private
            raise BadInput(f"{expression!r} is not a -k expression: {err}") from None

    @staticmethod
    @functools.cache
    def of(expression: str) -> Selection:
        """The expression compiled once a process, however many commands and layers select with it."""
        return Selection(expression)

    def matches(self, name: str) -> bool:
        text = name.replace("@", AT).lower()
        return self.expression.evaluate(lambda word, /, **_: word.lower() in text)
