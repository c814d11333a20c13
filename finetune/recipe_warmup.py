"""Recipe warm-up: training documents in the pipeline's three stage formats, from the recipe corpus.

Why: the pipeline asks its models for a numbered list of problems (Figure 10), a `[TESTS]` block
(Figure 11) and a `[PYTHON]` answer (Figure 12). A model that has never seen these formats (a random
demo model, or a base model) writes nothing the parsers accept. Warm-up documents are those three calls
as the pipeline makes them, answered from the corpus's train split (generator/corpus.py): the prompt text
comes from generator/prompts.py, the single source of the prompts, and the answers are rendered by its
answer functions, which write exactly what the paper's one-shot examples write.

Each document is a raw completion, as every backend sends the stage prompts (BOS + prompt; the prompts
carry their own `[INST]` tags, so no chat template is applied), and only the answer and its EOS are
trained. The held-out split never appears here.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict

from finetune.config import BUNDLED, RecipeConfig
from finetune.data import TokenizedDoc, instruct_example, tokenize_examples
from generator.corpus import CorpusProblem, load_corpus
from generator.prompts import (
    problems_answer,
    problems_prompt,
    solution_answer,
    solutions_prompt,
    tests_answer,
    tests_prompt,
)
from selfinstruct.errors import UserError


class CompletionExample(BaseModel):
    """One stage call and the answer to train: `prompt` is sent as is, `completion` continues it."""

    model_config = ConfigDict(frozen=True)

    id: str
    stage: str  # "problems", "tests" or "solutions"
    prompt: str
    completion: str


def warmup_examples(problems: Sequence[CorpusProblem], *, list_sizes: Sequence[int] = (10,), list_rounds: int = 3,
                    solution_variants: int = 2, seed: int = 0) -> list[CompletionExample]:
    """The warm-up documents of `problems` (normally the corpus's train split), deterministic for `seed`.

    - problems: `list_rounds` times, the problems shuffled and cut into numbered lists whose sizes cycle
      through `list_sizes`; each list's prompt asks for exactly its number of questions, so every problem
      is a trained answer `list_rounds` times;
    - tests: one call per problem asking for as many tests as it has, answered with all of them;
    - solutions: `solution_variants` calls per problem, each showing a different one of its tests.
    """
    if not problems:
        raise ValueError("warm-up needs at least one problem")
    if not list_sizes or min(list_sizes) < 1 or list_rounds < 0 or solution_variants < 0:
        raise ValueError(f"bad warm-up sizes: list_sizes={list(list_sizes)}, list_rounds={list_rounds}, "
                         f"solution_variants={solution_variants}")
    rng = random.Random(seed)
    examples: list[CompletionExample] = []
    for round_ in range(list_rounds):
        order = list(problems)
        rng.shuffle(order)
        start, index = 0, 0
        while start < len(order):
            size = list_sizes[index % len(list_sizes)]
            chunk = [p.problem for p in order[start:start + size]]
            examples.append(CompletionExample(id=f"recipe-problems-{round_}-{index}", stage="problems",
                                              prompt=problems_prompt(len(chunk)), completion=problems_answer(chunk)))
            start, index = start + size, index + 1
    for problem in problems:
        examples.append(CompletionExample(id=f"recipe-tests-{problem.id}", stage="tests",
                                          prompt=tests_prompt(problem.problem, count=len(problem.tests)),
                                          completion=tests_answer(problem.tests)))
        shown = rng.sample(range(len(problem.tests)), min(solution_variants, len(problem.tests)))
        for variant, test_index in enumerate(shown):
            examples.append(CompletionExample(id=f"recipe-solutions-{problem.id}-{variant}", stage="solutions",
                                              prompt=solutions_prompt(problem.problem, problem.tests[test_index]),
                                              completion=solution_answer(problem.solution)))
    return examples


def tokenize_completion(tokenizer, example: CompletionExample) -> TokenizedDoc:
    """BOS + prompt ids (not trained), then the completion's ids and EOS (trained).

    The prompt is encoded exactly as the generating backends encode it (`encode(prompt, bos=True)`), and
    the completion without SentencePiece's dummy leading space, as the continuation it is.
    """
    prompt_ids = tokenizer.encode(example.prompt, bos=True)
    answer_ids = tokenizer.encode_no_space(example.completion) + [tokenizer.eos_id]
    return TokenizedDoc(ids=prompt_ids + answer_ids, trained=[False] * len(prompt_ids) + [True] * len(answer_ids))


@dataclass(frozen=True)
class RecipeDocuments:
    """What the recipe corpus adds to a run: trained documents, and validation documents of the held-out split."""

    train: list[TokenizedDoc]
    val: list[TokenizedDoc]


def recipe_documents(cfg: RecipeConfig, tokenizer, seq_len: int, answer_format: str, system: str | None,
                     seed: int) -> RecipeDocuments:
    """The corpus's documents for `cfg` (finetune/config.py RecipeConfig): warm-up calls and/or instruct
    examples of the train split to train on, and the same of the held-out split to validate on."""
    path = None if cfg.path == BUNDLED else cfg.path
    corpus = load_corpus(path)
    train_docs: list[TokenizedDoc] = []
    val_docs: list[TokenizedDoc] = []
    for split, docs in (("train", train_docs), ("heldout", val_docs)):
        problems = [p for p in corpus if p.split == split]
        if not problems:
            continue
        if split == "train" and cfg.max_problems is not None and cfg.max_problems < len(problems):
            problems = sorted(random.Random(f"recipe/{seed}").sample(problems, cfg.max_problems), key=problems.index)
        if cfg.warmup:
            # validation: only the calls about one problem (held-out problems never appear in a list)
            examples = warmup_examples(problems, list_sizes=cfg.list_sizes,
                                       list_rounds=cfg.list_rounds if split == "train" else 0,
                                       solution_variants=cfg.solution_variants, seed=seed)
            docs += [_fitting(tokenize_completion(tokenizer, e), e.id, seq_len) for e in examples]
        if cfg.instruct:
            rows = [instruct_example({"id": f"recipe-instruct-{p.id}", "problem": p.problem, "solution": p.solution},
                                     answer_format, system, origin=f"recipe corpus {p.id}") for p in problems]
            docs += tokenize_examples(tokenizer, rows, seq_len)
    if not train_docs:
        raise UserError(f"the recipe corpus {path or 'bundled'} has no train split to learn from")
    return RecipeDocuments(train=train_docs, val=val_docs)


def _fitting(doc: TokenizedDoc, example_id: str, seq_len: int) -> TokenizedDoc:
    if len(doc) > seq_len:
        raise UserError(f"recipe warm-up document {example_id!r} has {len(doc)} tokens, more than data.seq_len="
                        f"{seq_len}; raise data.seq_len or lower data.recipe.list_sizes")
    return doc
