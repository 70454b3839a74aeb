"""Training the matching model with Splink (DuckDB, in memory) without labels, and Splink's own batch
predictions for the dedupe job. Splink is imported here only, so processes that never train or dedupe
never load it.

Training follows Splink's unsupervised recipe: the prior from deterministic rules and an assumed recall,
u-probabilities from random pairs, m-probabilities by expectation maximisation, once per blocking rule
(a rule's own fields cannot be estimated from the pairs it selects, so several rules cover each other).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from accord.identity.matching import MatchSettings, Weights, level_labels, splink_comparisons, splink_rule

MAX_EM_PAIRS = 2_000_000
U_PAIRS = 2_000_000


class TrainingError(ValueError):
    """Training could not produce a model (too few profiles, or no field ever set)."""


@dataclass(frozen=True, slots=True)
class Trained:
    splink: dict[str, Any]  # Splink's own model JSON (settings with the trained m and u)
    weights: Weights
    profiles: int


def _table(ids: Sequence[str], records: Sequence[dict[str, Any]], settings: MatchSettings) -> pa.Table:
    columns: dict[str, Any] = {"unique_id": pa.array(ids, pa.string())}
    for column in settings.columns():
        kind = pa.int64() if column.endswith("__days") else pa.string()
        columns[column] = pa.array([r.get(column) for r in records], kind)
    return pa.table(columns)


def _splink_settings(settings: MatchSettings) -> dict[str, Any]:
    return {
        "link_type": "dedupe_only",
        "unique_id_column_name": "unique_id",
        "comparisons": splink_comparisons(settings),
        "blocking_rules_to_generate_predictions": [splink_rule(rule) for rule in settings.blocking],
        "retain_matching_columns": False,
        "retain_intermediate_calculation_columns": False,
    }


def weights_of(linker: Any, settings: MatchSettings) -> Weights:
    """The log2 Bayes factor of every level of a trained Splink model, and its prior (as log2 odds). Splink
    leaves out a comparison whose column is never set; such a field weighs 0 at every level."""
    model = linker._settings_obj
    lam = model._probability_two_random_records_match
    found: dict[str, tuple[float, ...]] = {}
    for comparison in model.comparisons:
        row = []
        for level in comparison.comparison_levels:
            factor = level._bayes_factor
            row.append(0.0 if factor is None else (math.log2(factor) if factor > 0 else -60.0))
        found[comparison.output_column_name] = tuple(row)
    sizes = [len(levels) for levels in level_labels(settings)]
    rows = tuple(found.get(f.name, (0.0,) * size) for f, size in zip(settings.fields, sizes, strict=True))
    if any(len(row) != size for row, size in zip(rows, sizes, strict=True)):
        raise TrainingError("Splink's trained comparisons do not have the configured levels")
    return Weights(prior=math.log2(lam / (1 - lam)), levels=rows)


def train(ids: Sequence[str], records: Sequence[dict[str, Any]], settings: MatchSettings, *, seed: int = 1) -> Trained:
    """Estimate the model from these (prepared) records, without labels."""
    if len(ids) < 10:
        raise TrainingError(f"training needs at least 10 profiles with match traits; there are {len(ids)}")
    from splink import DuckDBAPI, Linker

    logging.getLogger("splink").setLevel(logging.ERROR)
    db_api = DuckDBAPI()
    frame = db_api.register(_table(ids, records, settings))
    linker = Linker(frame, _splink_settings(settings), log_level=None)
    try:
        linker.training.estimate_probability_two_random_records_match(
            [splink_rule(rule) for rule in settings.deterministic], recall=settings.recall
        )
    except Exception:  # Splink refuses when the rules find no pair at all: assume one duplicate per record
        linker._settings_obj._probability_two_random_records_match = 1 / len(ids)
    linker.training.estimate_u_using_random_sampling(max_pairs=U_PAIRS, seed=seed)
    trained_any = False
    for rule in settings.blocking:
        if len(rule) == len(settings.fields):
            continue
        try:
            linker.training.estimate_parameters_using_expectation_maximisation(
                splink_rule(rule), max_pairs=MAX_EM_PAIRS
            )
            trained_any = True
        except Exception:  # noqa: S112 - a rule that selects no pairs on this data teaches nothing
            continue
    if not trained_any:
        raise TrainingError("no blocking rule selected pairs to learn from")
    return Trained(splink=linker.misc.save_model_to_json(), weights=weights_of(linker, settings), profiles=len(ids))


def predict(
    ids: Sequence[str],
    records: Sequence[dict[str, Any]],
    settings: MatchSettings,
    splink_model: dict[str, Any],
    *,
    threshold: float,
) -> Iterator[tuple[str, str, float, float]]:
    """Splink's predictions over all blocked pairs of these records: (id_l, id_r, match weight, probability)
    for each pair at or above `threshold`."""
    from splink import DuckDBAPI, Linker

    logging.getLogger("splink").setLevel(logging.ERROR)
    db_api = DuckDBAPI()
    frame = db_api.register(_table(ids, records, settings))
    linker = Linker(frame, splink_model, log_level=None)
    result = linker.inference.predict(threshold_match_probability=threshold)
    relation = result.as_duckdbpyrelation().select("unique_id_l, unique_id_r, match_weight, match_probability")
    for left, right, weight, chance in relation.fetchall():
        yield str(left), str(right), float(weight), float(chance)
