"""What a prunable unit is, per model family: Conv output channels and Linear output features
(:mod:`.channels`), attention heads (:mod:`.attention`, :mod:`.mha`), what a model costs (:mod:`.cost`), and
the registry of unit families that the layers above consult (:mod:`.families`).
"""
