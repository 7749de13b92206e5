"""Math answer verification: extraction (extract.py), normalisation (normalize.py), a bounded parser (parse.py),
canonical forms and voting keys (canon.py), equivalence and the public API (answers.py), and a pool of time-limited
worker processes for math-verify (pool.py, worker.py). Standard library only, apart from the optional math-verify;
this __init__ stays empty so that verifier workers import only what their jobs need."""
