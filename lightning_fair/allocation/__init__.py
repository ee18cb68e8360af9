"""How many units each layer loses (the tolerance of difference, :mod:`.tolerance`; a global
threshold or a uniform ratio, :mod:`.budgets`) and which go first within a layer (:mod:`.order`).
"""
