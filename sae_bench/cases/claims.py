"""Claims: the seeds' findings as relations between cases of one family, declared in its case file.

A claim reads `METRIC(CASE) OP EXPRESSION`, for example
`ce_loss_recovered(base-sae@instruct) >= ce_loss_recovered(instruct-sae@instruct) - 0.02`: each term names a metric
and a case of the family (its id without the `FAMILY/` prefix); the two sides are sums, differences and products
of terms and numbers; OP is one of `>= <= > <`. A term may read a transfer case's metric over one token class,
`mse_by_class[first](base-sae@it)`: the suite then evaluates that case with its token classes. Each claim names
its `source` (a paper's sentence, table or figure) and the `margin` basis. `reproduced = false` (with `why`) marks
a seed claim the family is known not to reproduce: its test then expects the claim to fail, and fails the day it
holds, so the case file stays true.
"""

from __future__ import annotations

import ast
import difflib
import operator
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from sae_bench.engine.definitions import CLASS_METRIC, UnknownDefinition, definition
from sae_bench.errors import CaseFileError


class CaseLookup(Protocol):
    """What a claim needs of the registry whose cases it relates (`cases.Registry`): the cases by id, in order."""

    cases: Mapping[str, Any]

    def __iter__(self) -> Iterator[Any]: ...


_TERM = re.compile(r"([A-Za-z_][A-Za-z0-9_]*(?:\[[a-z-]+\])?)\(\s*([^()\s]+)\s*\)")
"""METRIC(CASE); a metric over one token class is M_by_class[CLASS] (`engine.definitions.CLASS_METRIC`)."""
_COMPARISONS = {ast.GtE: (">=", operator.ge), ast.LtE: ("<=", operator.le), ast.Gt: (">", operator.gt)}
_COMPARISONS |= {ast.Lt: ("<", operator.lt)}
_ARITHMETIC = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}
CLAIM_KEYS = {"name", "assert", "source", "margin", "reproduced", "why"}


@dataclass(frozen=True)
class Term:
    """One `metric(case)` of a claim."""

    metric: str
    case_id: str  # the full case id, FAMILY/…

    def __str__(self) -> str:
        return f"{self.metric}({self.case_id.split('/', 1)[1]})"


@dataclass(frozen=True)
class ClaimOutcome:
    """Both sides of a claim with their values, and whether it holds."""

    holds: bool
    left: float
    right: float
    text: str

    def explain(self, values: Mapping[Term, float]) -> str:
        terms = ", ".join(f"{term} = {value:.6g}" for term, value in values.items())
        verdict = "holds" if self.holds else "does NOT hold"
        return f"{self.text}\n  left side {self.left:.6g}, right side {self.right:.6g}: {verdict}\n  ({terms})"


@dataclass(frozen=True)
class Claim:
    """A relation between metrics of cases of one family, with its source and the basis of its margin."""

    family: str
    name: str
    text: str
    source: str
    margin: str
    terms: tuple[Term, ...]
    file: str
    reproduced: bool = True
    why: str = ""
    _tree: Any = None

    @property
    def id(self) -> str:
        return f"{self.family}::{self.name}"

    @property
    def case_ids(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(term.case_id for term in self.terms))

    @property
    def classed_case_ids(self) -> tuple[str, ...]:
        """The cases a term reads a token class of: they are evaluated with their token classes."""
        return tuple(dict.fromkeys(term.case_id for term in self.terms if CLASS_METRIC.fullmatch(term.metric)))

    def evaluate(self, values: Mapping[Term, float]) -> ClaimOutcome:
        """Both sides from the terms' values (every term must have a number)."""
        placeholders = {f"__t{i}": float(values[term]) for i, term in enumerate(self.terms)}
        comparison = self._tree.body
        symbol, compare = _COMPARISONS[type(comparison.ops[0])]
        left = _value(comparison.left, placeholders)
        right = _value(comparison.comparators[0], placeholders)
        return ClaimOutcome(bool(compare(left, right)), left, right, self.text)


def judge(claim: Claim, outcome: ClaimOutcome) -> tuple[str, str]:
    """("passed" | "failed" | "xfailed", why): a claim fails when it does not hold, and a claim its case file says is
    not reproduced fails when it holds (so the file stays true) and is an expected failure otherwise."""
    if claim.reproduced:
        return ("passed", "") if outcome.holds else ("failed", "the claim does not hold")
    if outcome.holds:
        return "failed", (
            f"{claim.file} says this claim is not reproduced here ({claim.why}), but it now holds: delete "
            "its reproduced = false and why if that is expected"
        )
    return "xfailed", f"not reproduced here, as the case file says: {claim.why}"


def _value(node: ast.AST, placeholders: Mapping[str, float]) -> float:
    if isinstance(node, ast.Constant):
        return float(node.value)
    if isinstance(node, ast.Name):
        return placeholders[node.id]
    if isinstance(node, ast.UnaryOp):
        return -_value(node.operand, placeholders)
    return _ARITHMETIC[type(node.op)](_value(node.left, placeholders), _value(node.right, placeholders))


def _check_side(node: ast.AST) -> str | None:
    """Why `node` is not a sum / difference / product of terms and numbers (None: it is)."""
    if isinstance(node, ast.Constant):
        return None if isinstance(node.value, int | float) and not isinstance(node.value, bool) else repr(node.value)
    if isinstance(node, ast.Name):
        return None if node.id.startswith("__t") else f"{node.id!r} (a term is METRIC(CASE))"
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return _check_side(node.operand)
    if isinstance(node, ast.BinOp) and type(node.op) in _ARITHMETIC:
        return _check_side(node.left) or _check_side(node.right)
    return ast.unparse(node)


def parse_claim(entry: Mapping[str, Any], family: str, registry: CaseLookup, path: Path | str, index: int) -> Claim:
    """One `[[claim]]` table, checked against the family's cases and their metric groups."""
    where = f"claim[{index}]"
    unknown = set(entry) - CLAIM_KEYS
    if unknown:
        raise CaseFileError(path, where, f"unknown keys {sorted(unknown)}", f"use {', '.join(sorted(CLAIM_KEYS))}")
    for key in ("name", "assert", "source", "margin"):
        if not isinstance(entry.get(key), str) or not entry[key].strip():
            raise CaseFileError(path, f"{where}.{key}", "missing or empty", f'set {key} = "…"')
    name, text = entry["name"], " ".join(entry["assert"].split())
    where = f"claim {name!r}"
    if not re.fullmatch(r"[a-z0-9][a-z0-9.\-]*", name):
        raise CaseFileError(path, where, "a claim name is lowercase words joined by '-'", 'name = "base-sae-transfers"')
    reproduced = entry.get("reproduced", True)
    if not isinstance(reproduced, bool) or (not reproduced and not str(entry.get("why", "")).strip()):
        raise CaseFileError(path, f"{where}.reproduced", "true or false; false needs why", 'why = "…"')

    terms: list[Term] = []

    def placeholder(match: re.Match) -> str:
        metric, rest = match.group(1), match.group(2)
        case_id = f"{family}/{rest}"
        if case_id not in registry.cases:
            family_ids = [c.id.split("/", 1)[1] for c in registry if c.family == family]
            close = difflib.get_close_matches(rest, family_ids, n=3, cutoff=0.5)
            hint = f"did you mean {', '.join(close)}?" if close else "write a case id of this file without FAMILY/"
            raise CaseFileError(path, where, f"no case {rest!r} in family {family}", hint)
        case = registry.cases[case_id]
        measured = [m for group in case.groups for m in case.metrics(group)]
        if CLASS_METRIC.fullmatch(metric) and not case.paired:  # measured with token classes for the claim
            try:
                definition(metric)
            except UnknownDefinition as err:
                raise CaseFileError(
                    path, where, err.args[0], "e.g. mse_by_class[first] (`sae-bench metrics`)"
                ) from None
        elif metric not in measured:
            close = difflib.get_close_matches(metric, measured, n=3)
            hint = f"did you mean {', '.join(close)}?" if close else f"its metrics: {', '.join(measured)}"
            raise CaseFileError(path, where, f"{rest} does not measure {metric!r} (groups {list(case.groups)})", hint)
        terms.append(Term(metric, case_id))
        return f"__t{len(terms) - 1}"

    try:
        tree = ast.parse(_TERM.sub(placeholder, text), mode="eval")
    except SyntaxError as err:
        raise CaseFileError(
            path, where, f"cannot parse {text!r}: {err.msg}", "write METRIC(CASE) OP EXPRESSION"
        ) from None
    body = tree.body
    if not (isinstance(body, ast.Compare) and len(body.ops) == 1 and type(body.ops[0]) in _COMPARISONS):
        raise CaseFileError(path, where, f"{text!r} is not one comparison", "use one of >=, <=, >, < between sides")
    bad = _check_side(body.left) or _check_side(body.comparators[0])
    if bad:
        raise CaseFileError(path, where, f"unexpected {bad} in {text!r}", "sides hold METRIC(CASE), numbers, + - * /")
    if not terms:
        raise CaseFileError(path, where, f"{text!r} names no METRIC(CASE) term", "relate metrics of cases")
    return Claim(
        family,
        name,
        text,
        entry["source"].strip(),
        entry["margin"].strip(),
        tuple(terms),
        str(path),
        reproduced,
        str(entry.get("why", "")).strip(),
        tree,
    )


def read_claims(path: Path, data: Mapping[str, Any], registry: CaseLookup) -> list[Claim]:
    """The `[[claim]]` entries of one parsed case file; duplicate names are an error."""
    family = data["family"]
    claims = [parse_claim(entry, family, registry, path, i) for i, entry in enumerate(data.get("claim", []))]
    names = [claim.name for claim in claims]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise CaseFileError(path, "claims", f"duplicate claim names {duplicates}", "give each claim its own name")
    return claims
