"""bench.train_vs_recipe's side-by-side turns: every variant steps once per round, and each follows each of the
others equally often (a step's time depends on what the one before it left in the caches)."""

from __future__ import annotations

import threading
from collections import Counter
from itertools import pairwise

from bench.train.timing import Turns


def test_turns_alternate_so_each_variant_follows_each_other_equally() -> None:
    names = ["baseline", "same", "tuned"]
    turns = Turns(names)
    steps = 8
    order: list[str] = []

    def variant(name: str) -> None:
        turns.start(name)
        turns.arrive(name)
        for step in range(1, steps + 1):
            order.append(name)  # only the variant holding the turn runs here
            turns.step_done(name, last=step == steps)

    threads = [threading.Thread(target=variant, args=(name,)) for name in names]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not any(thread.is_alive() for thread in threads)
    assert Counter(order) == {name: steps for name in names}
    rounds = [order[i : i + 3] for i in range(0, len(order), 3)]
    assert all(sorted(r) == sorted(names) for r in rounds)  # one step each per round
    follows = Counter(pairwise(order))
    assert all(before != after for before, after in follows)  # never twice in a row
    for name in names:
        predecessors = [count for (before, after), count in follows.items() if after == name]
        assert len(predecessors) == 2 and max(predecessors) - min(predecessors) <= 1, follows
