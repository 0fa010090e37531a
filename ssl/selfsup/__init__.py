"""selfsup: self-supervised pretraining for vision on Lightning, webdataset and FAISS."""

__version__ = "0.1.0"
