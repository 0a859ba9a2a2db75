"""Downsampling for comparison charts (pure functions) and the comparison service on a scratch database."""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, insert, text
from sqlalchemy.orm import Session

from app.services import compare as compare_service
from app.services.downsample import align, downsample, minmax_buckets, nice_width
from runspec.spec_paths import apply_changes, differing_paths, flatten
from tests.conftest import POSTGRES_ADMIN_URL, _services_unavailable
from tunedeck_state.models import Base, Metric, Run


def _noisy(n: int, seed: int = 0) -> tuple[list[float], list[float]]:
    rng = random.Random(seed)
    xs = [float(i) for i in range(1, n + 1)]
    ys = [rng.gauss(1.0, 0.1) for _ in xs]
    return xs, ys


@pytest.mark.parametrize("n", [1_001, 10_000, 123_457])
def test_downsample_keeps_global_min_and_max(n: int) -> None:
    xs, ys = _noisy(n, seed=n)
    ys[n // 3] = 40.0  # a loss spike
    ys[n // 3 + 1] = -5.0  # and a dip right after it
    ys[-1] = 41.0  # the last point is the maximum
    out_x, out_y = downsample(xs, ys, 1000)
    assert len(out_x) == len(out_y) <= 1000
    assert max(out_y) == max(ys) == 41.0 and min(out_y) == min(ys) == -5.0
    assert 40.0 in out_y
    assert out_x == sorted(out_x) and len(set(out_x)) == len(out_x)
    assert out_x[0] <= xs[0] + 1000 and out_x[-1] >= xs[-1] - n / 400  # spans the series


def test_short_series_are_unchanged() -> None:
    xs, ys = _noisy(300)
    assert downsample(xs, ys, 1000) == (xs, ys)


def test_buckets_shared_by_series_align_on_few_x_positions() -> None:
    width = nice_width(10_000, 499)
    assert width == 25.0
    a = minmax_buckets(*_noisy(10_000, 1), width)
    b = minmax_buckets(*_noisy(7_000, 2), width)
    c = minmax_buckets([5.0, 2_600.0, 9_990.0], [1.0, 2.0, 3.0], width)  # a sparse series (eval loss)
    union, columns = align([a, b, c])
    assert len(union) <= 1000
    assert [len(col) for col in columns] == [len(union)] * 3
    assert [v for v in columns[2] if v is not None] == [1.0, 2.0, 3.0]
    # every kept point moved by at most half a bucket
    assert all(abs(x - orig) <= width / 2 for x, orig in zip(c[0], [5.0, 2_600.0, 9_990.0], strict=True))


def test_nice_width() -> None:
    assert nice_width(1000, 10) == 100
    assert nice_width(1001, 10) == 200
    assert nice_width(2.4e6, 499) == 5000


def test_method_change_replaces_the_method_block() -> None:
    base = {"method": {"name": "lora", "r": 8, "lora_alpha": 16}, "training": {"seed": 1}}
    assert apply_changes(base, {"method.r": 4})["method"] == {"name": "lora", "r": 4, "lora_alpha": 16}
    assert apply_changes(base, {"method.name": "full"})["method"] == {"name": "full"}
    changed = apply_changes(base, {"method": {"name": "prompt_tuning", "num_virtual_tokens": 8}})
    assert changed["method"] == {"name": "prompt_tuning", "num_virtual_tokens": 8}
    assert base["method"]["r"] == 8  # the base is not modified
    flats = [flatten(base), flatten(apply_changes(base, {"method.r": 4})), flatten(changed)]
    assert differing_paths(flats) == ["method.name", "method.r", "method.lora_alpha", "method.num_virtual_tokens"]


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.services)])
def scratch_session(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Session]:
    """An empty schema on SQLite, or in a fresh PostgreSQL database (dropped afterwards)."""
    if request.param == "sqlite":
        engine = create_engine(f"sqlite:///{tmp_path / 'scratch.sqlite'}")
    else:
        engine = _fresh_postgres_database()
    Base.metadata.create_all(engine)
    session = Session(engine)
    try:
        yield session
    finally:
        session.close()
        engine.dispose()
        if request.param == "postgresql":
            _drop_database(engine.url.database or "")


def _fresh_postgres_database() -> Engine:
    """A database of its own (not the stacks' one), so creating and dropping tables touches nothing else."""
    name = f"tunedeck_compare_{uuid.uuid4().hex[:10]}"
    try:
        admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        admin.dispose()
    except Exception as exc:
        _services_unavailable(f"PostgreSQL at {POSTGRES_ADMIN_URL} is unreachable: {exc}")
    return create_engine(POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}")


def _drop_database(name: str) -> None:
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def _run(session: Session, name: str, r: int, seed: int) -> Run:
    spec = {
        "name": name,
        "model": "m",
        "dataset": {"source": "d.jsonl"},
        "method": {"name": "lora", "r": r},
        "training": {"seed": seed, "max_steps": 5000},
    }
    run = Run(
        name=name,
        status="succeeded",
        method="lora",
        model="m",
        spec=spec,
        spec_hash=name,
        step=5000,
        max_steps=5000,
        trainable_params=100 * r,
        total_params=100_000,
        details={},
        latest_metrics={"gen_bleu": {"step": 5000, "value": 10.0 * r + seed}},
    )
    session.add(run)
    session.flush()
    return run


def test_comparison_downsamples_from_the_database_and_averages_seeds(scratch_session: Session) -> None:
    session = scratch_session
    runs = [_run(session, f"r{r}-s{seed}", r, seed) for r in (2, 8) for seed in (1, 2)]
    rng = random.Random(3)
    spikes: dict[int, float] = {}
    for index, run in enumerate(runs):
        rows: list[dict[str, Any]] = []
        for step in range(1, 5001):
            rows.append({"run_id": run.id, "key": "loss", "step": step, "value": rng.uniform(1, 2)})
            rows.append({"run_id": run.id, "key": "tokens_seen", "step": step, "value": 100.0 * step})
        spikes[run.id] = 50.0 + index
        rows[2 * (1234 + index)]["value"] = spikes[run.id]
        for step in (1000, 2000, 5000):
            rows.append({"run_id": run.id, "key": "eval_loss", "step": step, "value": 3.0 - step / 5000 - index / 10})
        session.execute(insert(Metric), rows)
    session.commit()

    cache = compare_service.SeriesCache()
    data = compare_service.compare(session, [r.id for r in runs], max_points=200, cache=cache)
    loss = data["curves"]["loss"]
    assert loss["downsampled"]
    for series in loss["series"]:
        assert len(series["x"]) <= 200 and max(series["y"]) == spikes[series["run_id"]]
    union, columns = align([(s["x"], s["y"]) for s in loss["series"]])  # one shared set of bucket positions
    assert len(union) <= 200 and [max(v for v in c if v is not None) for c in columns] == list(spikes.values())
    assert [row["best_eval_loss"] for row in data["table"]] == pytest.approx([2.0, 1.9, 1.8, 1.7])
    # Seeds averaged: two groups (r=2, r=8) of two seeds each, and the BLEU line against r has 2 points.
    assert sorted(g["n"] for g in data["groups"]) == [2, 2]
    (chart,) = [c for c in data["params"] if c["param"] == "method.r"]
    (line,) = chart["metrics"]["gen_bleu"]["lines"]
    assert [(p["x"], p["mean"], p["std"], p["n"]) for p in line["points"]] == [(2, 21.5, 0.5, 2), (8, 81.5, 0.5, 2)]
    # Tokens on x: the same spikes, x in tokens seen.
    tokens = compare_service.compare(session, [r.id for r in runs], x="tokens", max_points=200, cache=cache)
    first = tokens["curves"]["loss"]["series"][0]
    assert first["x"][-1] > 400_000 and max(first["y"]) == spikes[runs[0].id]
    # Cached: a second comparison of finished runs does not need the metric rows again.
    session.execute(Metric.__table__.delete())
    again = compare_service.compare(session, [r.id for r in runs], max_points=200, cache=cache)
    assert again["curves"]["loss"] == loss
    csv_text = compare_service.table_csv(data)
    assert csv_text.splitlines()[0].split(",")[:3] == ["id", "name", "status"]


def test_pareto_front_keeps_only_undominated_runs() -> None:
    # (id, trainable params, eval loss): 3 is beaten by 2 (fewer params, lower loss); 4 ties 1 on loss with more
    points = [(1, 100.0, 2.0), (2, 1_000.0, 1.5), (3, 5_000.0, 1.6), (4, 200.0, 2.0), (5, 1e6, 1.0)]
    assert compare_service.pareto_front(points, lower_is_better=True) == [1, 2, 5]
    bleu = [(1, 100.0, 10.0), (2, 1_000.0, 30.0), (3, 5_000.0, 20.0)]
    assert compare_service.pareto_front(bleu, lower_is_better=False) == [1, 2]
