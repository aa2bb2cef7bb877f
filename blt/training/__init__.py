"""Pretraining with Lightning: ``python train.py {entropy,blt,baseline} --config FILE`` (see :mod:`.cli`).

- :mod:`.config`: the ``optim`` and ``trainer`` sections and the run config assembling every YAML section;
- :mod:`.modules`: one LightningModule per command (entropy model, BLT, tokenized baseline);
- :mod:`.datamodule`: resumable training batches and the fixed validation set;
- :mod:`.callbacks`: atomic checkpoints, the periodic last checkpoint, throughput and MFU;
- :mod:`.run`: one training stage (fit, final validation, export, ``summary.json``);
- :mod:`.cli`: the command line.
"""
