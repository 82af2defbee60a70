"""The error a broken policy file raises: every problem found, each naming file, line, key and what is wrong."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class PolicyProblem:
    """One thing wrong in a policy file. `line` is 1-based; None when the key is not in the text."""

    file: str
    line: int | None
    key: str  # dotted key path, e.g. "experiments.atlas.budgets.monthly"; "" for the whole file
    problem: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        return f"{where}: {self.key}: {self.problem}" if self.key else f"{where}: {self.problem}"


class PolicyError(ValueError):
    """A policy file that cannot be applied. Nothing of it was applied.

    The first problem is also available as `file`, `line`, `key`, `problem`; `problems` holds all of them,
    in file order, so an operator fixes the whole file in one round.
    """

    def __init__(
        self, file: str, line: int | None, key: str, problem: str, *, more: Sequence[PolicyProblem] = ()
    ) -> None:
        first = PolicyProblem(file, line, key, problem)
        self.problems: tuple[PolicyProblem, ...] = (first, *more)
        self.file = file
        self.line = line
        self.key = key
        self.problem = problem
        count = len(self.problems)
        header = f"{file}: {count} problem{'s' if count > 1 else ''}"
        super().__init__("\n".join([header, *(f"  {p}" for p in self.problems)]))

    @classmethod
    def from_problems(cls, problems: Sequence[PolicyProblem]) -> PolicyError:
        if not problems:
            raise ValueError("PolicyError needs at least one problem")
        ordered = sorted(problems, key=lambda p: (p.line if p.line is not None else 10**9, p.key))
        first, *rest = ordered
        return cls(first.file, first.line, first.key, first.problem, more=rest)
