"""`selfsup bench`: what training and evaluation cost, measured.

- ``cli.py``: the arguments of ``selfsup bench``, ``bench data`` and ``bench knn`` (torch loads after parsing);
- ``methods.py`` and ``step.py``: each method's training step against its floor (the backbone passes it cannot
  avoid);
- ``data.py`` and ``photos.py``: loader throughput, from MNIST shards to the real-photo set at 224 px;
- ``knn.py``: FAISS kNN search against brute-force torch (and faiss-gpu against faiss-cpu);
- ``maxbatch.py``: the largest per-device batch of a recipe's step that fits in memory;
- ``gpucheck.py``: every GPU path in one prepared run with a time limit per step (``make gpu-check``).
"""
