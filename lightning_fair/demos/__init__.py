"""Demo models and data, not part of the pruning library: hand-written reference models (:mod:`.zoo`) and
a digits LightningModule and DataModule (:mod:`.digits`; needs the ``demo`` extra, scikit-learn).
"""
