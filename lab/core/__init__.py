"""The library core: everything a stage composes, knowing nothing of stages or run folders.

text, sources, documents, taskdata   Chinese text, the offline sources, user text, labelled tasks
vocab, segment, wordpiece, masking   vocabularies, jieba, tokens with word ids, whole-word masking
models, attention, longformer, mlm   presets, attention kernels, BERT -> Longformer, MLM pieces
train, kd, kdcache, tasks            the training loop, distillation, the teacher cache, fine-tuning
metrics, longdocs, longprobe         one definition of each measurement; long-document tools
files, progress, errors              atomic files and hashes, progress bars, the user-facing error
"""
