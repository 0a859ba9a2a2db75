"""Generation metrics at the end of training, so runs compare on what they answer, not only on loss.

A fixed sample of held-out prompts (the first `training.eval_generation_samples` of the eval split, which is
drawn with the run's seed) is answered greedily; the answers are scored against the held-out responses with
maintained libraries: BLEU by sacrebleu with its Chinese tokenizer (every CJK character is a token, other
text is split as in 13a), ROUGE-L by rouge-score on the same tokens, and exact match after stripping spaces.
The scores become metrics at the last step (`gen_exact_match`, `gen_bleu`, `gen_rouge_l`) and the answers
are kept in the run's details, so comparisons can show them side by side.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from worker.training.data import IGNORE_INDEX
from worker.training.modes import evaluating
from worker.training.reporter import Reporter

log = logging.getLogger("tunedeck.training")

#: sacrebleu's tokenizer for Chinese: one token per CJK character, 13a rules elsewhere.
BLEU_TOKENIZE = "zh"
PROMPT_PREFIX = "Human: "
PROMPT_SUFFIX = "\n\nAssistant:"
#: Characters kept per stored prompt, reference and answer (details are stored with the run).
STORED_CHARS = 1000

METRIC_KEYS = ("gen_exact_match", "gen_bleu", "gen_rouge_l")


@dataclass(frozen=True)
class HeldOutPrompt:
    prompt_ids: list[int]
    #: The instruction (and input) as a user would type it: the prompt without the template's frame.
    instruction: str
    reference: str


@dataclass(frozen=True)
class GenerationEval:
    metrics: dict[str, float]
    samples: list[dict[str, str]]
    seconds: float


def held_out_prompts(eval_set: Any, tokenizer: Any, count: int) -> list[HeldOutPrompt]:
    """The first `count` held-out samples, split back into prompt ids and the reference response."""
    prompts = []
    for index in range(min(count, len(eval_set))):
        example = eval_set[index]
        labels = list(example["labels"])
        start = next((i for i, label in enumerate(labels) if label != IGNORE_INDEX), len(labels))
        prompt_ids = list(example["input_ids"][:start])
        reference_ids = [t for t in labels[start:] if t != IGNORE_INDEX and t != tokenizer.eos_token_id]
        if not prompt_ids:
            continue
        prompt_text = tokenizer.decode(prompt_ids, skip_special_tokens=True)
        prompts.append(
            HeldOutPrompt(
                prompt_ids=prompt_ids,
                instruction=_instruction(prompt_text),
                reference=tokenizer.decode(reference_ids, skip_special_tokens=True).strip(),
            )
        )
    return prompts


def _instruction(prompt_text: str) -> str:
    text = prompt_text
    if text.startswith(PROMPT_PREFIX):
        text = text[len(PROMPT_PREFIX) :]
    text = text.rstrip()
    if text.endswith(PROMPT_SUFFIX):
        text = text[: -len(PROMPT_SUFFIX)]
    return text.strip()


def generate_answers(model: Any, tokenizer: Any, prompts: Sequence[HeldOutPrompt], max_new_tokens: int) -> list[str]:
    """Greedy answers, one prompt at a time (no padding, so an answer does not depend on its neighbours)."""
    eos_id = tokenizer.eos_token_id
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_id
    device = next(model.parameters()).device
    answers = []
    with evaluating(model):
        for prompt in prompts:
            input_ids = torch.tensor([prompt.prompt_ids], device=device)
            with torch.inference_mode():
                output = model.generate(
                    input_ids=input_ids,
                    attention_mask=torch.ones_like(input_ids),
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    temperature=None,
                    top_p=None,
                    top_k=None,
                    pad_token_id=pad_id,
                    eos_token_id=eos_id,
                )[0]
            new_ids = output[input_ids.shape[1] :].tolist()
            if eos_id is not None and eos_id in new_ids:
                new_ids = new_ids[: new_ids.index(eos_id)]
            answers.append(tokenizer.decode(new_ids, skip_special_tokens=True).strip())
    return answers


def score(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Exact match (0–1), corpus BLEU (0–100, sacrebleu) and mean ROUGE-L F1 (0–1, rouge-score), with
    character-level tokens for Chinese."""
    import sacrebleu
    from rouge_score import rouge_scorer
    from sacrebleu.tokenizers.tokenizer_zh import TokenizerZh

    if len(predictions) != len(references):
        raise ValueError("predictions and references differ in length")
    if not predictions:
        return {}

    zh = TokenizerZh()

    class _ZhTokens:
        """rouge-score's tokenizer interface over sacrebleu's Chinese tokenizer (no lower-casing, no stemming)."""

        def tokenize(self, text: str) -> list[str]:
            return str(zh(text)).split()

    scorer = rouge_scorer.RougeScorer(["rougeL"], tokenizer=_ZhTokens())
    rouge = [scorer.score(ref, pred)["rougeL"].fmeasure for pred, ref in zip(predictions, references, strict=True)]
    bleu = sacrebleu.corpus_bleu(list(predictions), [list(references)], tokenize=BLEU_TOKENIZE)
    exact = [pred.strip() == ref.strip() for pred, ref in zip(predictions, references, strict=True)]
    return {
        "gen_exact_match": sum(exact) / len(exact),
        "gen_bleu": float(bleu.score),
        "gen_rouge_l": sum(rouge) / len(rouge),
    }


def evaluate_generation(
    model: Any, tokenizer: Any, eval_set: Any, samples: int, max_new_tokens: int
) -> GenerationEval | None:
    started = time.perf_counter()
    prompts = held_out_prompts(eval_set, tokenizer, samples)
    if not prompts:
        return None
    answers = generate_answers(model, tokenizer, prompts, max_new_tokens)
    metrics = score(answers, [p.reference for p in prompts])
    stored = [
        {
            "prompt": p.instruction[:STORED_CHARS],
            "reference": p.reference[:STORED_CHARS],
            "output": answer[:STORED_CHARS],
        }
        for p, answer in zip(prompts, answers, strict=True)
    ]
    return GenerationEval(metrics=metrics, samples=stored, seconds=time.perf_counter() - started)


def report_generation_metrics(
    model: Any, tokenizer: Any, eval_set: Any, *, samples: int, max_new_tokens: int, step: int, reporter: Reporter
) -> GenerationEval | None:
    """Evaluate and report at `step`. A failure here is logged, not raised: the trained result still counts."""
    if eval_set is None or samples <= 0:
        return None
    log.info("generation metrics: answering %d held-out prompts", min(samples, len(eval_set)))
    try:
        result = evaluate_generation(model, tokenizer, eval_set, samples, max_new_tokens)
    except Exception as exc:
        log.warning("generation metrics failed: %s: %s", type(exc).__name__, exc)
        return None
    if result is None:
        return None
    reporter.metrics(step, result.metrics)
    reporter.details(
        {
            "generations": result.samples,
            "generation_eval": {
                "samples": len(result.samples),
                "max_new_tokens": max_new_tokens,
                "bleu_tokenize": BLEU_TOKENIZE,
                "seconds": round(result.seconds, 3),
            },
        }
    )
    log.info(
        "generation metrics on %d prompts: exact match %.3f, BLEU %.2f, ROUGE-L %.3f",
        len(result.samples),
        result.metrics["gen_exact_match"],
        result.metrics["gen_bleu"],
        result.metrics["gen_rouge_l"],
    )
    return result
