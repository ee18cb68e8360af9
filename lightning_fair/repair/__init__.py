"""After removal: mean-replacement compensation folded into the consumers' biases (:mod:`.compensation`)
and BatchNorm running statistics re-estimated (:mod:`.batchnorm`).
"""
