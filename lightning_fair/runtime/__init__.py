"""What running a model needs, whatever is pruned: splitting calibration batches, train/eval flags and
exact rollback of a failed pruning, the collectives of distributed runs, optimizers re-pointed at new parameters.
"""
