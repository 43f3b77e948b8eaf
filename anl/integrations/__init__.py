"""Integrations of the :mod:`anl` core with training recipes."""
