"""The reproduction of the paper's experiment: a profile in, a results directory out.

- :mod:`.profile` (:class:`~.profile.Profile`, over the JSON schema of :mod:`.document`): what
  an experiment profile says and implies;
- :mod:`.plan`: the profile's stages as a graph of tasks (:mod:`.tasks`), run by the one
  executor, :mod:`.executor`;
- :mod:`.stages`: the results directory's layout and the wall time of each stage;
- :mod:`.report` (with :mod:`.report_tables`, :mod:`.claims`, :mod:`.figures`): tables,
  ``results.json``, figures and ``summary.md``;
- :mod:`.reproduce`: :func:`~.reproduce.reproduce`, all of it in order.
"""
