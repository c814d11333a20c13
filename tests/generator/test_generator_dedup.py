"""Exact and near-duplicate filters, and benchmark decontamination."""

from __future__ import annotations

from db.records import text_hash
from generator.decontam import Decontaminator
from generator.dedup import ExactDeduplicator, NearDeduplicator
from generator.normalize import normalize_problem, problem_hash


def test_normalization_ignores_case_and_spacing_only():
    assert normalize_problem("  Write a\tFunction\n that  SORTS a list. ") == "write a function that sorts a list."
    assert problem_hash("Reverse A string") == problem_hash("reverse   a STRING")
    assert problem_hash("Reverse a string.") != problem_hash("Reverse a string")
    assert problem_hash("Reverse a string") == text_hash(normalize_problem("Reverse a string"))  # the db's key


def test_exact_dedup_keeps_the_first_and_resumes_from_known_hashes():
    dedup = ExactDeduplicator()
    assert dedup.add("Sort a list of tuples by their second item.")
    assert not dedup.add("sort a list of tuples by their  SECOND item.")
    resumed = ExactDeduplicator([problem_hash("Sort a list of tuples by their second item.")])
    assert not resumed.add("Sort a list of tuples by their second item.")


def test_near_dedup_drops_paraphrases_and_keeps_different_problems():
    dedup = NearDeduplicator(threshold=0.6)
    first = "Write a function that returns the sum of all even numbers in a list of integers."
    assert dedup.add(first) is None
    assert dedup.add("Write a function that returns the sum of all even numbers in a list of integer values.") == first
    assert dedup.add("Write a function that checks whether a binary tree is balanced.") is None
    assert len(dedup) == 2
    strict = NearDeduplicator(threshold=0.95)
    assert strict.add(first) is None
    assert strict.add("Write a function that returns the sum of all odd numbers in a list of integers.") is None


def test_decontamination_finds_humaneval_overlap_in_prompts_and_solutions():
    decontam = Decontaminator.from_sources(humaneval=True, n=10)
    reason = decontam.check(
        "Write a function to return list of prime factors of given integer in the order from smallest to largest."
    )
    assert reason is not None and reason.startswith("HumanEval/25: ")
    assert decontam.check("Write a function that checks whether a binary tree is balanced.") is None
    custom = Decontaminator([("MBPP/1", "Write a function to find the minimum cost path to reach (m, n)")], n=6)
    assert custom.check("Please write a FUNCTION to find the minimum cost path in a grid") == (
        "MBPP/1: 'write a function to find the'"
    )
    assert custom.check("Find the shortest path") is None  # shorter than n: compared as a whole 4-gram
    assert custom.check("Find the minimum cost path!") == "MBPP/1: 'find the minimum cost path'"
