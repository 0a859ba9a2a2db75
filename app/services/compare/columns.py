"""The comparison table's columns and the limits of one comparison."""

from __future__ import annotations

from collections.abc import Sequence

MAX_RUNS = 200
MAX_ID = 2**31 - 1
DEFAULT_MAX_POINTS = 1000
#: Curves overlaid per metric, in the order the page shows them.
CURVE_KEYS = ("loss", "eval_loss", "learning_rate", "memory_bytes", "tokens_per_second")
TOKENS_KEY = "tokens_seen"
#: Series read for the table's statistics (besides the curves).
STAT_KEYS = (*CURVE_KEYS, "eval_perplexity", TOKENS_KEY)
X_MODES = ("step", "tokens")
SEED_PATH = "training.seed"

#: (key, label, kind): the table's columns, also the CSV's header. kind: int, float, str.
COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("id", "#", "int"),
    ("name", "Name", "str"),
    ("status", "Status", "str"),
    ("method", "Method", "str"),
    ("params", "Key params", "str"),
    ("trainable_params", "Trainable", "int"),
    ("trainable_percent", "Trainable %", "float"),
    ("final_train_loss", "Train loss", "float"),
    ("best_eval_loss", "Best eval loss", "float"),
    ("eval_perplexity", "Perplexity", "float"),
    ("gen_exact_match", "Exact match", "float"),
    ("gen_bleu", "BLEU", "float"),
    ("gen_rouge_l", "ROUGE-L", "float"),
    ("peak_memory_estimate", "Peak mem. est.", "int"),
    ("peak_memory_measured", "Peak mem.", "int"),
    ("tokens_per_second", "Tokens/s", "float"),
    ("wall_time_seconds", "Wall time (s)", "float"),
    ("seed", "Seed", "int"),
    ("sweep_id", "Sweep", "int"),
)
NUMERIC_COLUMNS = tuple(key for key, _, kind in COLUMNS if kind in ("int", "float") and key not in ("id", "sweep_id"))
#: Metrics plotted against swept parameters and efficiency; True when lower is better.
QUALITY_METRICS: dict[str, bool] = {
    "best_eval_loss": True,
    "eval_perplexity": True,
    "gen_bleu": False,
    "gen_rouge_l": False,
    "gen_exact_match": False,
    "final_train_loss": True,
}
LABELS = {key: label for key, label, _ in COLUMNS}


class RunsNotFound(LookupError):
    def __init__(self, missing: Sequence[int]) -> None:
        super().__init__(f"no run with id {', '.join(map(str, missing))}")
        self.missing = list(missing)
