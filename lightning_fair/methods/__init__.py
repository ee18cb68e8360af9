"""Related methods beside FAIR-Pruner: on-the-fly pruning (hyperspherical training and mean recovery,
:mod:`.onthefly`, :mod:`.hypersphere`, :mod:`.polarization`) and unstructured per-connection pruning with the
screening criterion (:mod:`.unstructured`).
"""
