"""The pipeline's store and work queue (SQLAlchemy: SQLite by default, PostgreSQL at scale) and the dataset export.

    from db.engine import make_engine, init_db        # engines, transactions, schema versions
    from db import queries                            # stage queries: pending_* / record_* / select_triples / funnel
    from db.records import LLMCallRecord, NewProblem  # the records the pipeline hands over

CLI: `selfinstruct db upgrade|stats`, `selfinstruct export`.
"""
