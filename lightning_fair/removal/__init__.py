"""Removing units: coupled groups planned over torch-pruning's DependencyGraph (:mod:`.planner`,
:mod:`.graph`), whole attention heads beside them (:mod:`.heads`), and the pruning history that rebuilds a
pruned model from a fresh one (:mod:`.history`: ``save_pruned``, ``load_pruned``).
"""
