"""Timing a Trainer's optimizer steps (one callback class for every side), side-by-side turns on a shared CPU,
and the held-out loss."""

from __future__ import annotations

import threading
import time
from typing import Any

from bench.train.setup import Measured


class Turns:
    """Round-robin turns for the variants of one repetition, trained side by side in threads so that they meet
    the same load on a shared machine: they set up one after the other (in order, so seeding stays
    deterministic), then take optimizer steps in turn (one runs, the others wait), and leave together after
    their last step. `abort` wakes everyone when a variant fails.

    The order of a round alternates between forward and backward (A B C, A C B, A B C, ...): a step's time
    depends on what the step before it left in the caches, so each variant follows each of the others equally
    often (a fixed order had the recipe always follow the tuned run's small batches, and the same-settings run
    always follow the recipe's large ones)."""

    def __init__(self, names: list[str], steps_per_turn: int = 1) -> None:
        self.names = names
        self.steps_per_turn = steps_per_turn
        self.cond = threading.Condition()
        self.setup_turn = 0
        self.turn: int | None = None  # index into names once everyone has set up
        self.rounds = 0  # rounds of turns completed
        self.position = 0  # the turn's place in its round's order
        self.finished: set[str] = set()
        self.done = False

    def _round_order(self) -> list[int]:
        order = list(range(len(self.names)))
        return order if self.rounds % 2 == 0 else [order[0], *reversed(order[1:])]

    def _holds(self, name: str) -> bool:
        return self.done or (self.turn is not None and self.names[self.turn] == name)

    def start(self, name: str) -> None:
        """Wait for this variant's turn to set up (load, build, make the Trainer)."""
        with self.cond:
            self.cond.wait_for(lambda: self.done or self.names[self.setup_turn] == name)

    def arrive(self, name: str) -> None:
        """Set up: let the next one set up; when all have, the first takes its first step. Returns at our turn."""
        with self.cond:
            self.setup_turn += 1
            if self.setup_turn == len(self.names):
                self.turn = 0
            self.cond.notify_all()
            self.cond.wait_for(lambda: self._holds(name))

    def step_done(self, name: str, last: bool) -> None:
        """Pass the turn on; return at our next turn (after the last step: when everyone has finished)."""
        with self.cond:
            if last:
                self.finished.add(name)
            if len(self.finished) == len(self.names):
                self.done = True
            elif self.turn is not None:
                for _ in range(2 * len(self.names)):
                    self.position += 1
                    if self.position == len(self.names):
                        self.position, self.rounds = 0, self.rounds + 1
                    self.turn = self._round_order()[self.position]
                    if self.names[self.turn] not in self.finished:
                        break
            self.cond.notify_all()
            self.cond.wait_for(lambda: self.done if last else self._holds(name))

    def wait_turn(self, name: str) -> None:
        with self.cond:
            self.cond.wait_for(lambda: self._holds(name))

    def abort(self) -> None:
        with self.cond:
            self.done = True
            self.cond.notify_all()


def make_probe(
    eval_batches: list[dict[str, Any]] | None, device: str, turns: Turns | None, name: str, *, reset_peak: bool = True
) -> Any:
    """A TrainerCallback (one class for every variant) that times every optimizer step, counts real and computed
    tokens of the batches the training dataloader produced, and computes the held-out loss afterwards. With
    `turns`, the variant's steps alternate with the others' (each step is timed within its own turn). On a GPU
    it records `max_memory_allocated` and `max_memory_reserved` at the end, from the start of training
    (`reset_peak`; False: from whenever the caller reset them)."""
    import torch
    from transformers import TrainerCallback

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    class Probe(TrainerCallback):
        def __init__(self) -> None:
            #: (real, computed) tokens of every batch collated; the dataloader looks one batch ahead, so only
            #: the first steps × accumulation of them were trained
            self.batches: list[tuple[int, int]] = []
            self.trained_batches = 0
            self.last = 0.0
            #: one duration per optimizer step: from the end of the previous one (fetching and collating the
            #: batch, forward, backward, optimizer, every callback and log of the step before) to its end
            self.step_seconds: list[float] = []
            self.eval_loss: float | None = None
            self.peak: int | None = None
            self.reserved: int | None = None

        def on_train_begin(self, args: Any, state: Any, control: Any, train_dataloader: Any = None, **kw: Any) -> None:
            # accelerate's DataLoaderShard iterates its base_dataloader, which calls collate_fn
            loader = getattr(train_dataloader, "base_dataloader", train_dataloader)
            inner = loader.collate_fn

            def counting(features: list[dict[str, Any]]) -> Any:
                batch = inner(features)
                ids = batch["input_ids"]
                mask = batch.get("attention_mask")
                self.batches.append((int(mask.sum()) if mask is not None else ids.numel(), ids.numel()))
                return batch

            loader.collate_fn = counting  # read when the epoch's iterator is made, after this
            if device == "cuda" and reset_peak:
                torch.cuda.reset_peak_memory_stats()
            if turns is not None:
                turns.arrive(name)
            sync()
            self.last = time.perf_counter()

        @property
        def real(self) -> int:
            return sum(real for real, _ in self.batches[: self.trained_batches])

        @property
        def computed(self) -> int:
            return sum(computed for _, computed in self.batches[: self.trained_batches])

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            self.trained_batches = state.global_step * args.gradient_accumulation_steps
            sync()
            self.step_seconds.append(time.perf_counter() - self.last)
            last = state.global_step >= state.max_steps
            if turns is not None and (last or state.global_step % turns.steps_per_turn == 0):
                turns.step_done(name, last=last)
            self.last = time.perf_counter()

        def on_train_end(self, args: Any, state: Any, control: Any, model: Any = None, **kw: Any) -> None:
            if device == "cuda":
                self.peak = int(torch.cuda.max_memory_allocated())
                self.reserved = int(torch.cuda.max_memory_reserved())
            if eval_batches is not None:
                self.eval_loss = held_out_loss(model, eval_batches)

    return Probe()


def held_out_loss(model: Any, batches: list[dict[str, Any]]) -> float:
    """Mean loss per learned token over the held-out batches (the model's own loss, weighted by its tokens)."""
    import torch

    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    device = next(model.parameters()).device
    try:
        with torch.no_grad():
            for batch in batches:
                moved = {k: v.to(device) for k, v in batch.items()}
                n = int((moved["labels"][:, 1:] != -100).sum())
                total += float(model(**moved).loss) * n
                count += n
    finally:
        model.train(was_training)
    return total / count


def side_by_side(jobs: dict[str, Any], turns: Turns) -> dict[str, Any]:
    """Run each variant's job (a function of its turns) in its own thread, taking turns; re-raise a failure."""
    results: dict[str, Any] = {}
    errors: list[BaseException] = []

    def work(name: str) -> None:
        try:
            results[name] = jobs[name](turns)
        except BaseException as exc:
            errors.append(exc)
            turns.abort()

    threads = [threading.Thread(target=work, args=(name,), name=f"bench-{name}") for name in turns.names]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return results


def measurement(
    method: str, variant: str, seed: int, probe: Any, wall: float, trainable: int | None, batching: Any
) -> Measured:
    return Measured(
        method=method,
        variant=variant,
        rep=-1,
        seed=seed,
        step_seconds=list(probe.step_seconds),
        real_tokens=probe.real,
        computed_tokens=probe.computed,
        eval_loss=probe.eval_loss,
        peak_bytes=probe.peak,
        reserved_bytes=probe.reserved,
        outside_seconds=wall - sum(probe.step_seconds),
        trainable=trainable,
        batching=batching,
    )
