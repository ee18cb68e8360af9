"""The user-facing one-shot pipeline: :func:`~lightning_fair.pipeline.oneshot.prune` (resolve -> score ->
rank -> allocate -> remove -> repair -> report), one scoring pass over many budgets (:mod:`.sweeping`), the
report (:mod:`.report`), evaluation (:mod:`.evaluation`) and the gradual schedule (:mod:`.schedule`).
"""
