"""The statistics pass: one forward and one backward per calibration batch, hooks that observe what U
needs (:mod:`.observation`), preallocated buffers (:mod:`.collector`), the classes U compares (:mod:`.classes`),
its memory estimate (:mod:`.memory`) and the merge across processes (:mod:`.ranks`).
"""
