"""Synthetic alpaca-format instruction data for demos, tests and benchmarks.

The rows are short, rule-based Chinese and English instruction tasks (adding small numbers, reversing or
uppercasing a word, sorting numbers, translating a fixed small vocabulary, ...) that a tiny randomly
initialised causal LM can visibly learn in a few dozen to a few hundred optimiser steps, so a fine-tune
started from the dashboard shows a falling loss without downloading anything.

Lengths deliberately vary like real instruction data: most answers are a few tokens long, while copying,
repeating and counting tasks produce prompts or answers of 100-300 characters, which matters for
throughput benchmarks that depend on padding and packing behaviour. About a third of the rows have an
empty ``input`` (the task is then stated entirely in the instruction), as in the original Alpaca data.

This module is pure Python (no torch / transformers) so the web process can import it cheaply.
Generation is deterministic: the same ``n`` and ``seed`` always give the same rows, and the first ``k``
rows of a larger ``n`` equal the rows generated with ``n=k``.
"""

from __future__ import annotations

import json
import math
import os
import random
from collections.abc import Callable
from pathlib import Path
from typing import Literal

__all__ = ["generate_alpaca_records", "generate_instruction_records", "write_demo_dataset"]

Lang = Literal["zh", "en"]
Record = dict[str, str]

# Fixed bilingual vocabulary used by the translation task and to build sentences.
VOCAB: tuple[tuple[str, str], ...] = (
    ("苹果", "apple"),
    ("香蕉", "banana"),
    ("猫", "cat"),
    ("狗", "dog"),
    ("鸟", "bird"),
    ("鱼", "fish"),
    ("书", "book"),
    ("水", "water"),
    ("太阳", "sun"),
    ("月亮", "moon"),
    ("星星", "star"),
    ("树", "tree"),
    ("花", "flower"),
    ("山", "mountain"),
    ("河", "river"),
    ("房子", "house"),
    ("汽车", "car"),
    ("老师", "teacher"),
    ("学生", "student"),
    ("朋友", "friend"),
    ("红色", "red"),
    ("蓝色", "blue"),
    ("绿色", "green"),
    ("大", "big"),
    ("小", "small"),
    ("快乐", "happy"),
    ("吃", "eat"),
    ("喝", "drink"),
    ("看", "see"),
    ("跑", "run"),
)

# Words for the string-manipulation tasks (reverse, uppercase, count, repeat, copy).
EN_WORDS: tuple[str, ...] = (
    "apple",
    "river",
    "python",
    "garden",
    "window",
    "coffee",
    "yellow",
    "planet",
    "silver",
    "orange",
    "music",
    "bread",
    "cloud",
    "light",
    "stone",
    "table",
    "green",
    "happy",
    "tiger",
    "lemon",
    "paper",
    "dream",
    "ocean",
    "forest",
    "rocket",
    "kitten",
    "winter",
    "summer",
    "castle",
    "pencil",
)
ZH_WORDS: tuple[str, ...] = (
    "你好",
    "世界",
    "学习",
    "中国",
    "天气",
    "朋友",
    "电脑",
    "音乐",
    "春天",
    "秋天",
    "大海",
    "高山",
    "读书",
    "快乐",
    "明天",
    "今天",
    "花园",
    "月亮",
    "星空",
    "火车",
)

# Sentence pieces for the longer copy / repeat samples.
EN_SUBJECTS: tuple[str, ...] = (
    "the cat",
    "a small dog",
    "my friend",
    "the teacher",
    "a happy student",
    "the old man",
    "a red bird",
    "the farmer",
)
EN_VERBS: tuple[str, ...] = ("eats", "sees", "likes", "finds", "draws", "carries", "wants", "reads about")
EN_OBJECTS: tuple[str, ...] = (
    "an apple",
    "the blue river",
    "a green tree",
    "the big mountain",
    "a yellow flower",
    "the bright moon",
    "a good book",
    "some cold water",
)
EN_PLACES: tuple[str, ...] = (
    "in the garden",
    "near the house",
    "under the sun",
    "by the river",
    "at school",
    "in the morning",
    "after dinner",
    "on the hill",
)
ZH_SUBJECTS: tuple[str, ...] = ("小猫", "小狗", "我的朋友", "老师", "学生", "老人", "小鸟", "农民")
ZH_VERBS: tuple[str, ...] = ("吃", "看见", "喜欢", "找到", "画", "带着", "想要", "读")
ZH_OBJECTS: tuple[str, ...] = (
    "苹果",
    "蓝色的河",
    "绿色的树",
    "大山",
    "黄色的花",
    "明亮的月亮",
    "一本好书",
    "凉水",
)
ZH_PLACES: tuple[str, ...] = (
    "在花园里",
    "在房子旁边",
    "在阳光下",
    "在河边",
    "在学校",
    "在早上",
    "在晚饭后",
    "在山上",
)


def _en_sentence(rng: random.Random) -> str:
    return f"{rng.choice(EN_SUBJECTS)} {rng.choice(EN_VERBS)} {rng.choice(EN_OBJECTS)} {rng.choice(EN_PLACES)}."


def _zh_sentence(rng: random.Random) -> str:
    return f"{rng.choice(ZH_SUBJECTS)}{rng.choice(ZH_PLACES)}{rng.choice(ZH_VERBS)}{rng.choice(ZH_OBJECTS)}。"


def _paragraph(rng: random.Random, lang: Lang, min_chars: int, max_chars: int) -> str:
    """Sentences from the fixed vocabulary joined until the text is ``min_chars..max_chars`` long."""
    target = rng.randint(min_chars, max_chars)
    make, sep = (_en_sentence, " ") if lang == "en" else (_zh_sentence, "")
    text = make(rng)
    while len(text) < target:
        text = text + sep + make(rng)
    return text


def _record(instruction: str, input_text: str, output: str) -> Record:
    return {"instruction": instruction, "input": input_text, "output": output}


# Each task takes (rng, language, inline) and returns one row. With inline=True the task's argument is
# written into the instruction and "input" stays empty.
Task = Callable[[random.Random, Lang, bool], Record]


def _task_add(rng: random.Random, lang: Lang, inline: bool) -> Record:
    a, b = rng.randint(0, 99), rng.randint(0, 99)
    expr = f"{a} + {b}"
    if inline:
        q = f"计算 {expr} 等于多少。" if lang == "zh" else f"What is {expr}?"
        return _record(q, "", str(a + b))
    return _record("计算两个数的和。" if lang == "zh" else "Add the two numbers.", expr, str(a + b))


def _task_subtract(rng: random.Random, lang: Lang, inline: bool) -> Record:
    a = rng.randint(0, 99)
    b = rng.randint(0, a)
    expr = f"{a} - {b}"
    if inline:
        q = f"计算 {expr} 等于多少。" if lang == "zh" else f"What is {expr}?"
        return _record(q, "", str(a - b))
    q = "计算两个数的差。" if lang == "zh" else "Subtract the second number from the first."
    return _record(q, expr, str(a - b))


def _task_reverse(rng: random.Random, lang: Lang, inline: bool) -> Record:
    word = rng.choice(EN_WORDS) if rng.random() < 0.7 else rng.choice(ZH_WORDS)
    if inline:
        q = f"把“{word}”倒过来写。" if lang == "zh" else f"Reverse the string '{word}'."
        return _record(q, "", word[::-1])
    q = "把下面的字符串倒过来写。" if lang == "zh" else "Reverse the following string."
    return _record(q, word, word[::-1])


def _task_uppercase(rng: random.Random, lang: Lang, inline: bool) -> Record:
    text = " ".join(rng.sample(EN_WORDS, rng.randint(1, 3)))
    if inline:
        q = f"把“{text}”转换成大写字母。" if lang == "zh" else f"Convert '{text}' to uppercase."
        return _record(q, "", text.upper())
    q = "把下面的文字转换成大写字母。" if lang == "zh" else "Convert the text to uppercase."
    return _record(q, text, text.upper())


def _task_count_chars(rng: random.Random, lang: Lang, inline: bool) -> Record:
    word = rng.choice(EN_WORDS) if rng.random() < 0.6 else rng.choice(ZH_WORDS)
    if inline:
        q = f"“{word}”有几个字符？" if lang == "zh" else f"How many characters are in '{word}'?"
        return _record(q, "", str(len(word)))
    q = "数一数下面的文字有几个字符。" if lang == "zh" else "Count the characters in the input."
    return _record(q, word, str(len(word)))


def _task_repeat_word(rng: random.Random, lang: Lang, inline: bool) -> Record:
    times = rng.randint(2, 6)
    if rng.random() < 0.5:
        word, sep = rng.choice(EN_WORDS), " "
    else:
        word, sep = rng.choice(ZH_WORDS), ""
    output = sep.join([word] * times)
    if inline:
        q = f"把“{word}”重复{times}次。" if lang == "zh" else f"Repeat the word '{word}' {times} times."
        return _record(q, "", output)
    q = f"把下面的词重复{times}次。" if lang == "zh" else f"Repeat the word {times} times."
    return _record(q, word, output)


def _task_sort(rng: random.Random, lang: Lang, inline: bool) -> Record:
    nums = [rng.randint(0, 99) for _ in range(rng.randint(3, 6))]
    given = ", ".join(map(str, nums))
    output = ", ".join(map(str, sorted(nums)))
    if inline:
        q = f"把这些数从小到大排序：{given}" if lang == "zh" else f"Sort these numbers in ascending order: {given}"
        return _record(q, "", output)
    q = "把下面的数从小到大排序。" if lang == "zh" else "Sort the numbers in ascending order."
    return _record(q, given, output)


def _task_translate(rng: random.Random, lang: Lang, inline: bool) -> Record:
    zh, en = rng.choice(VOCAB)
    to_english = rng.random() < 0.5
    src, dst = (zh, en) if to_english else (en, zh)
    if inline:
        if to_english:
            q = f"“{src}”的英文是什么？" if lang == "zh" else f"Translate '{src}' into English."
        else:
            q = f"“{src}”的中文是什么？" if lang == "zh" else f"Translate '{src}' into Chinese."
        return _record(q, "", dst)
    if to_english:
        q = "把下面的词翻译成英文。" if lang == "zh" else "Translate the word into English."
    else:
        q = "把下面的词翻译成中文。" if lang == "zh" else "Translate the word into Chinese."
    return _record(q, src, dst)


def _task_max(rng: random.Random, lang: Lang, inline: bool) -> Record:
    nums = rng.sample(range(100), rng.randint(3, 5))
    given = ", ".join(map(str, nums))
    if inline:
        q = f"这些数中最大的是哪个：{given}" if lang == "zh" else f"Which is the largest number: {given}"
        return _record(q, "", str(max(nums)))
    q = "找出下面最大的数。" if lang == "zh" else "Find the largest number."
    return _record(q, given, str(max(nums)))


def _task_copy(rng: random.Random, lang: Lang, inline: bool) -> Record:
    """Copy a sentence; a long one (100-300 characters) half of the time."""
    text_lang: Lang = "en" if rng.random() < 0.5 else "zh"
    if rng.random() < 0.5:
        text = _paragraph(rng, text_lang, 100, 300)
    else:
        text = _en_sentence(rng) if text_lang == "en" else _zh_sentence(rng)
    if inline:
        q = f"原样重复这句话：{text}" if lang == "zh" else f"Repeat this text exactly: {text}"
        return _record(q, "", text)
    q = "原样抄写下面的文字。" if lang == "zh" else "Copy the input exactly."
    return _record(q, text, text)


def _task_repeat_sentence(rng: random.Random, lang: Lang, inline: bool) -> Record:
    """Repeat a sentence a few times: a short prompt with a long (roughly 60-300 character) answer."""
    times = rng.randint(2, 5)
    if rng.random() < 0.5:
        sentence, sep = _en_sentence(rng), " "
    else:
        sentence, sep = _zh_sentence(rng), ""
    output = sep.join([sentence] * times)
    if inline:
        q = f"把这句话重复{times}遍：{sentence}" if lang == "zh" else f"Repeat this sentence {times} times: {sentence}"
        return _record(q, "", output)
    q = f"把下面的句子重复{times}遍。" if lang == "zh" else f"Repeat the sentence {times} times."
    return _record(q, sentence, output)


def _task_count_up(rng: random.Random, lang: Lang, inline: bool) -> Record:
    """List the integers from ``start`` to ``end``: answers from a few to about 250 characters."""
    start = rng.randint(1, 20)
    end = start + rng.randint(3, 60)
    output = ", ".join(str(i) for i in range(start, end + 1))
    if inline:
        q = f"从{start}数到{end}。" if lang == "zh" else f"Count from {start} to {end}."
        return _record(q, "", output)
    q = "从第一个数数到第二个数。" if lang == "zh" else "Count from the first number to the second."
    return _record(q, f"{start} {end}", output)


# (task, weight): short tasks dominate, as in real instruction data; copy / repeat / count add the long tail.
_TASKS: tuple[tuple[Task, int], ...] = (
    (_task_add, 14),
    (_task_subtract, 6),
    (_task_reverse, 10),
    (_task_uppercase, 8),
    (_task_count_chars, 6),
    (_task_repeat_word, 8),
    (_task_sort, 8),
    (_task_translate, 12),
    (_task_max, 5),
    (_task_copy, 11),
    (_task_repeat_sentence, 6),
    (_task_count_up, 6),
)


def generate_alpaca_records(n: int = 1200, seed: int = 0) -> list[dict[str, str]]:
    """Return ``n`` deterministic alpaca rows ``{"instruction", "input", "output"}`` in Chinese and English.

    The same ``(n, seed)`` always yields identical rows; all randomness comes from ``random.Random(seed)``.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = random.Random(seed)
    tasks = [task for task, _ in _TASKS]
    weights = [weight for _, weight in _TASKS]
    records: list[dict[str, str]] = []
    for _ in range(n):
        task = rng.choices(tasks, weights=weights)[0]
        lang: Lang = "zh" if rng.random() < 0.5 else "en"
        inline = rng.random() < 1 / 3
        records.append(task(rng, lang, inline))
    return records


def generate_instruction_records(
    n: int = 2000, seed: int = 0, median_chars: float = 490.0, sigma: float = 0.7
) -> list[dict[str, str]]:
    """``n`` alpaca rows whose lengths vary like real instruction data, for throughput benchmarks.

    The bundled demo rows are short (median about 20 tokens) so a tiny model learns them; GPT-4-style instruction
    data (alpaca-gpt4-data-zh) has long, widely varying answers. Here each answer is a paragraph from the fixed
    vocabulary whose length in characters is log-normal (``median_chars``, ``sigma``); with the demo tokenizer the
    course template gives a median of about 140 tokens, a tenth of the samples cut at 256, and a padded-to-real
    token ratio of about 1.6 for random batches of 8 at max_length 256, as measured on the real data. A third
    of the rows carry an ``input`` paragraph to continue. Deterministic.
    """
    rng = random.Random(seed)
    records: list[dict[str, str]] = []
    for _ in range(n):
        lang: Lang = "zh" if rng.random() < 0.5 else "en"
        zh, en = rng.choice(VOCAB)
        chars = max(1, round(median_chars * math.exp(rng.gauss(0.0, sigma))))
        if rng.random() < 1 / 3:
            instruction = "接着下面的话写下去。" if lang == "zh" else "Continue the text below."
            input_text = _paragraph(rng, lang, 10, 80)
        else:
            instruction = f"写一段关于“{zh}”的话。" if lang == "zh" else f"Write a short story about the word '{en}'."
            input_text = ""
        records.append(_record(instruction, input_text, _paragraph(rng, lang, chars, chars)))
    return records


def write_demo_dataset(path: Path, n: int = 1200, seed: int = 0) -> Path:
    """Write ``generate_alpaca_records(n, seed)`` to ``path`` as UTF-8 JSON Lines and return ``path``.

    The file is written to a temporary sibling and renamed into place, so readers never see a partial file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("w", encoding="utf-8", newline="\n") as fh:
        for record in generate_alpaca_records(n, seed):
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
    return path
