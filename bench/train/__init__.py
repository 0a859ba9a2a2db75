"""Training benchmarks' shared parts: the data and models (`setup`), timing a Trainer's steps (`timing`), the
hand-written recipe (`recipe`) and tunedeck's worker path (`tunedeck`). Used by bench/train_vs_recipe.py (the
course's recipe on CPU or GPU) and bench/gpu_train.py (`make bench-gpu`: real shapes on one GPU)."""
