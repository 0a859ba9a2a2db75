"""Search sweeps (random, TPE) and early stopping, on Optuna studies rebuilt from the stored runs."""
