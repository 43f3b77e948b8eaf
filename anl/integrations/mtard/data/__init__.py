"""The data of the MTARD experiments: what each dataset is, where its files come from, and the
batches a run reads.

- :mod:`.registry`: :data:`~.registry.DATASETS`, :class:`~.registry.ImageData` and
  :func:`~.registry.load_dataset`, which reads a split through
- :mod:`.cifar` (the official pickle archives, read by a restricted unpickler) or
  :mod:`.fashion_mnist` (IDX files, Debian's copy first), both downloading through
- :mod:`.download` (streamed, verified, atomic);
- :mod:`.loader`: :func:`~.loader.split_validation` and :class:`~.loader.BatchLoader`.
"""
