"""The paper's prompts, verbatim, and their filling."""

from __future__ import annotations

from generator import prompts


def test_prompts_are_the_papers_text():
    assert prompts.PROBLEMS_PROMPT.startswith("[INST] Write 50 programming interview questions of easy and medium")
    assert prompts.PROBLEMS_PROMPT.endswith("single standalone Python function using standard libraries. [/INST]")
    assert 'You must write the comment "#Test case n:" on a separate line' in prompts.TESTS_PROMPT
    assert (
        "assert get_unique_elements([1, 2, 3, 2, 1]) == [1, 2, 3]\n[/TESTS]\n[INST] Problem: %%%question%%%\n[/INST]"
        in prompts.TESTS_PROMPT
    )
    assert "from which you can infere the function signature." in prompts.SOLUTIONS_PROMPT  # the paper's spelling
    assert prompts.SOLUTIONS_PROMPT.endswith("[INST] Problem: %%%question%%%\nTest: %%%test%%%\n[/INST]")


def test_filling_replaces_only_the_placeholders_once():
    problem = "Write a function f that returns '%%%test%%%' {0} unchanged."
    prompt = prompts.solutions_prompt(problem, "assert f() == '%%%question%%%'")
    assert prompt.endswith(f"[INST] Problem: {problem}\nTest: assert f() == '%%%question%%%'\n[/INST]")
    assert prompts.tests_prompt("  Reverse a list.  ").endswith("[INST] Problem: Reverse a list.\n[/INST]")
    assert "write 3 tests" in prompts.tests_prompt("x", count=3)
    assert prompts.problems_prompt(50) == prompts.PROBLEMS_PROMPT
    assert prompts.problems_prompt(7).startswith("[INST] Write 7 programming interview questions")
