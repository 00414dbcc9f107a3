"""The pool store and what feeds it: SQLite pools, the round's snapshot, import, holdout,
integrity checks and the review CSV. Imports no torch.
"""
