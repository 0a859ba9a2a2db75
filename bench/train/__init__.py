"""Training benchmarks' shared parts: the data and models (`setup`), timing a Trainer's steps (`timing`), the
hand-written recipe (`recipe`), tunedeck's worker path (`tunedeck`), the model shapes (`shapes`) and the
recipe benchmark's BENCHMARKS.md section (`tables`). Used by bench/train_vs_recipe.py (the
course's recipe on CPU or GPU) and bench/gpu_train.py (`make bench-gpu`: real shapes on one GPU)."""
