"""The L-infinity attacks that train and evaluate the MTARD students.

- :mod:`.registry`: :data:`~.registry.ATTACKS`, the one registry of the evaluation attacks
  (names, titles, groups, the paper's protocol), and :func:`~.registry.make_attack`;
- :mod:`.gradient`: PGD (also the training attack), FGSM, CW-inf and transfer attacks;
- :mod:`.square`: the Square Attack (score-based black box);
- :mod:`.autoattack`: AutoAttack through the optional ``pyautoattack``;
- :mod:`.keyed_rng`: the counter-based randomness that makes attacks batch-invariant.
"""
