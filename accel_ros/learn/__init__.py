"""Training and evaluation (`accel-ros train`, `average`, `eval`; the commands live in cli/).

- config.py: `TrainConfig` / `EvalConfig`, every option as data, and the allowed values.
- train.py: a run: model, data, the stages in turn, the final checkpoint.
- stages.py: what each stage trains and on what (reference, update, fusion, joint).
- loop.py: the one epoch loop all stages run (seeded shuffles, poly LR, rows, resume state).
- pair_cache.py: cached (keyframe, current) pairs of the fusion and joint stages;
  age_pairs.py: pairs of every keyframe age up to seconds, for the age-aware fusion.
- distill.py: N_U learning a teacher reference's soft scores.
- records.py: logs, metrics, curves and resumable state on disk.
- optim.py, augment.py, batch_augment.py: losses and optimizers; augmentation per frame on
  the host, or per batch on any device.
- gpu_sprint.py, sprint_pack.py: every stage on one GPU in one command, and what it carries.
- evaluate.py: mIoU per keyframe offset and interval through the streaming pipeline.
"""
