"""Pretraining with Lightning: ``python train.py {entropy,blt,baseline} --config FILE`` (see :mod:`.cli`).

- :mod:`.cli`: the command line (jsonargparse, as LightningCLI), one sub-command per model;
- :mod:`.config`: the ``optim`` and ``run`` sections, and the ``trainer`` section (Lightning's arguments);
- :mod:`.pipeline`: each command as explicit stages (entropy model -> calibration -> BLT; tokenizer ->
  tokens -> baseline), checked before the first one starts;
- :mod:`.run`: one training stage (fit, final validation, export, whole-split score, ``summary.json``);
- :mod:`.rundir`: what a run directory holds, its lock, and what a new command may do with it;
- :mod:`.modules`: one LightningModule per model, built from ready configs and weights;
- :mod:`.datamodule`: resumable training batches and the fixed validation set;
- :mod:`.callbacks`: atomic checkpoints, the periodic last checkpoint, throughput and MFU;
- :mod:`.logs`: ``metrics.csv`` and TensorBoard logs that continue across resumes.
"""
