"""What every other package of the MTARD reproduction runs on: processes, files, layouts and
optional dependencies.

- :mod:`.process`: the process group under ``torchrun``, this process's device and rank, the
  node-main-first download, agreement between ranks, the BatchNorm buffer broadcast;
- :mod:`.files`: one fsync'd atomic write for every file the package writes (and the removal
  of the temporary files killed writes leave), and the safe reading of ``torch.save`` and
  JSON files;
- :mod:`.integrity`: the content hash our checkpoints and results carry, verified on load;
- :mod:`.execution`: how a network runs: its memory format, its train/eval mode, the torch
  threads;
- :mod:`.optional`: the optional dependencies (tqdm, matplotlib, pyautoattack, tensorboard),
  imported only where needed, with one line naming the pip extra when one is missing;
- :mod:`.plugins`: a registry by name that also accepts import paths
  (``package.module:attribute``), for the user's own models and datasets.

It imports nothing from the rest of the package but :mod:`..checks`.
"""
