"""What a run made that the bundled recipe corpus did not already hold.

Why: the quickstart's demo model learned its formats from the corpus (finetune/recipe_warmup.py), so most
of what it writes is recalled. The report says how much is not: accepted problems whose normalized text
(the pipeline's own dedup key) is not a corpus problem, and triples whose solution is not the corpus's
reference for its problem (compared as code with db.selection.normalize_code, formatting and comments
aside). For a run with real models the same counts show how much of the data merely restates the corpus.
"""

from __future__ import annotations

import sqlalchemy as sa
from pydantic import BaseModel
from sqlalchemy.engine import Engine

from db.engine import read_transaction
from db.models import Problem, Solution, Triple
from db.selection import normalize_code
from generator.corpus import CorpusProblem, load_corpus
from generator.normalize import problem_hash


class Novelty(BaseModel):
    accepted: int
    new_problems: int  # accepted problems not in the corpus after normalization
    triples: int
    triples_new_problem: int  # triples of problems not in the corpus
    triples_other_solution: int  # triples of corpus problems whose solution is not the reference's code

    @property
    def triples_unlike_reference(self) -> int:
        return self.triples_new_problem + self.triples_other_solution


def novelty(engine: Engine, run_id: int, corpus: list[CorpusProblem] | None = None) -> Novelty:
    """Counts of the run's accepted problems and triples that are not simply the corpus's own."""
    corpus = load_corpus() if corpus is None else corpus
    reference = {problem_hash(p.problem): normalize_code(p.solution) for p in corpus}
    problems, triples, solutions = Problem.__table__, Triple.__table__, Solution.__table__
    with read_transaction(engine) as conn:
        hashes = conn.execute(
            sa.select(problems.c.norm_hash).where(problems.c.run_id == run_id, problems.c.status == "accepted")
        ).scalars().all()
        picked = conn.execute(
            sa.select(problems.c.norm_hash, solutions.c.code)
            .select_from(triples.join(problems, problems.c.id == triples.c.problem_id)
                         .join(solutions, solutions.c.id == triples.c.solution_id))
            .where(triples.c.run_id == run_id)
        ).all()
    new_problem = sum(1 for h, _ in picked if h not in reference)
    other_solution = sum(1 for h, code in picked if h in reference and normalize_code(code or "") != reference[h])
    return Novelty(accepted=len(hashes), new_problems=sum(1 for h in hashes if h not in reference),
                   triples=len(picked), triples_new_problem=new_problem, triples_other_solution=other_solution)
