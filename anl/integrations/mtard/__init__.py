"""The MTARD recipe (Zhao et al., ECCV 2022) built on :mod:`anl`."""
