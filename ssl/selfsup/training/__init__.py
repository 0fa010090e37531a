"""What keeps a training run alive and readable.

Callbacks and loggers: ``nonfinite.py`` (NaN/Inf guard), ``collapse.py`` (RankMe and collapse warnings),
``progress.py`` (console lines), ``loggers.py`` (a CSV logger that survives resumes), ``slurm.py`` (requeue
and SIGTERM). ``precision.py``: ``trainer.precision: auto``. The run folder: ``checkpointing.py`` and
``atomic.py`` (safe saves, resume from the newest intact checkpoint), ``runlock.py`` (one run per folder),
``resume.py`` (``--ckpt_path last``), ``runs.py`` (where evaluations write).
"""
