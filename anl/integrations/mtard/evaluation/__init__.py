r"""Robustness evaluation: clean, robust and W-Robust accuracy, counted once for every caller.

For a model :math:`f`, test points :math:`(x_i, y_i)_{i=1}^n` and an attack :math:`A`:

.. math::

    \mathrm{Clean} = \frac1n \sum_i [f(x_i) = y_i], \qquad
    \mathrm{Robust} = \frac1n \sum_i [f(x_i) = y_i]\,[f(A(x_i)) = y_i],

    \text{W-Robust} = \pi_{nat}\,\mathrm{Clean} + \pi_{adv}\,\mathrm{Robust},
    \qquad \pi_{nat} = \pi_{adv} = 0.5 \quad \text{(paper Eq. 12).}

A point counts as robust only if it is classified correctly on the adversarial input *and*
on the clean one (AutoAttack/RobustBench's convention, so Robust <= Clean always). The
TRADES/RSLAD scripts count correctness on the adversarial input alone; that count is kept as
``adv_correct`` (the two differ only when an attack turns a wrong prediction into a right
one, which is rare).

:func:`~.counting.count_correct` is the one counting kernel: it runs the model and the
attacks over batches of ``(x, y, dataset index)`` and sums the correct predictions over ranks.
Its callers:

- :func:`~.robustness.evaluate` attacks a test split with the attacks of
  :mod:`..attacks.registry`, or scores transfer examples crafted beforehand
  (:func:`~.transfer.craft_transfer`, once per surrogate);
- :func:`~.validation.validate` scores the training loop's validation split under a short
  PGD, for the checkpoint selection by W-Robust.
"""
