"""Loss-weighting rules beyond the Adaptive Normalization Loss, each a :class:`anl.LossWeighting`."""
