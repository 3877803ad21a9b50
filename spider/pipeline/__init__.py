"""Pipeline stages that turn a zoo recipe into the files training reads.

pretrain (checkpoints) -> extract (feature store) -> finetune (ground-truth CSVs) -> labelling
(label cache of training tasks) -> bank (fine-tuned training tasks); :mod:`spider.pipeline.build`
drives them for a recipe (:mod:`spider.pipeline.recipes`). The datamodules only read what these
stages wrote; see ARCHITECTURE.md for who may import whom.
"""
