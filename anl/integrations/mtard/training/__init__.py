"""Training one student with one method: the configuration, the data, the loop, the logs.

- :mod:`.config`: :class:`~.config.TrainConfig`, everything that defines a run;
- :mod:`.run_data`: the run's training and validation splits;
- :mod:`.trainer`: :func:`~.trainer.train`, the loop, its checkpoints and resume;
- :mod:`.logs`: the CSV and TensorBoard logs of a run.
"""
