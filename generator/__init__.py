"""The self-instruct recipe of Code Llama - Instruct as a resumable pipeline.

    config.py    the run's YAML configuration (pydantic), overrides and fingerprint
    prompts.py   the paper's three prompts, verbatim
    parsers.py   completions -> problems, asserts, solution code (never raise; failures have reasons)
    normalize.py, dedup.py, decontam.py   exact / near-duplicate filters, HumanEval decontamination
    seeds.py     per-item seeds from the run seed (a resumed run asks the same questions)
    stages.py    one batch of each stage: database queue in, LLM or sandbox, database out
    pipeline.py  the driver: stage threads, backends and sandbox (in process or on Ray), progress
    report.py    the run report table and funnel plot
    cli.py       `selfinstruct generate`, `python -m generator run|report`
    backends/, scale.py, actor_pool.py, ray_cluster.py   LLM backends and Ray scale-out
"""
