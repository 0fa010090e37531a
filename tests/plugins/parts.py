"""A callback for tests that records which training shards this rank streams."""

from __future__ import annotations

import json
from pathlib import Path

from lightning.pytorch.callbacks import Callback


class RecordParts(Callback):
    """At each training epoch's start, write ``OUT/parts-rank{R}-epoch{E}.json``: this process's rank, world size,
    node and the shards its stream reads in the epoch's first pass (as its one loader worker would)."""

    def __init__(self, out: str) -> None:
        self.out = Path(out)

    def on_train_epoch_start(self, trainer, *args) -> None:
        stream = trainer.train_dataloader.loader.dataset
        parts = [part.name for part in stream.my_parts(trainer.current_epoch, worker=0, num_workers=1)]
        self.out.mkdir(parents=True, exist_ok=True)
        record = {"rank": trainer.global_rank, "world_size": trainer.world_size, "node_rank": trainer.node_rank,
                  "stream_rank": stream.rank, "stream_world_size": stream.world_size, "parts": parts,
                  "all_parts": [part.name for part in stream.parts]}
        (self.out / f"parts-rank{trainer.global_rank}-epoch{trainer.current_epoch}.json").write_text(json.dumps(record))
