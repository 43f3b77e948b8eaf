"""The training methods: MTARD, its ablations and the baselines of the paper.

- :mod:`.registry`: :data:`~.registry.METHODS` (each method's losses, weighting, teachers and
  labels) and :func:`~.registry.build_weighting`;
- :mod:`.steps`: one loss function per method, following its official code;
- :mod:`.losses`: the KL and CE conventions of the official codes;
- :mod:`.context`: :class:`~.context.MethodContext`, what a method is given besides the batch.
"""
