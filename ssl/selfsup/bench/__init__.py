"""`selfsup bench`: what training and evaluation cost, measured.

- ``cli.py``: the arguments of ``selfsup bench``, ``bench data`` and ``bench knn`` (torch loads after parsing);
- ``methods.py`` and ``step.py``: each method's training step against its floor (the backbone passes it cannot
  avoid);
- ``data.py`` and ``photos.py``: loader throughput, from MNIST shards to the real-photo set at 224 px;
- ``knn.py``: FAISS kNN search against brute-force torch.
"""
