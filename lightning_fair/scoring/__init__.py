"""Statistics -> scores: FAIR's utilization and reconstruction scores (:mod:`.fair`, with the W1
distances of :mod:`.distances`), the screening criterion (:mod:`.screening`), and what a criterion hands on
(:class:`~lightning_fair.scoring.criterion.CriterionScores`: removal and protection scores per layer).
"""
