"""`python -m lab bench ...`: ours and the named baseline, side by side on the same input, one run.

Each benchmark prints what it measures and returns one result: bench, ours, baseline, unit, ratio
(ours over baseline, higher is better), target, and details; the command line prints it as the last
line, in JSON. Benchmarks import only the library core.

wwm       segment + tokenize + word ids + packing against a run_chinese_ref.py-style pipeline
pretrain  the lab's training loop against the stock transformers Trainer (real tokens/s)
locality  pretraining with the locality warm-up against the same run without it
distill   students from cached teacher top-k against a teacher forward every step
longify   one training step of the Longformer against full attention, 512 to 4,096 tokens
"""
