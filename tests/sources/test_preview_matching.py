"""Preview shows the profiles probabilistic matching finds like each row, once a model is trained."""

from __future__ import annotations

from conftest import LiveAccord
from identity.test_linkage import population, profile_id, train
from sources.importing import source

MAPPING = """
mapping: 1
name: crm
identifiers: [{field: crm_id, type: user_id}]
traits: [{field: firstName}, {field: lastName}, {field: birthday}]
"""


def preview(live: LiveAccord, csv: str) -> list[dict[str, object]]:
    with live.api() as api:
        answer = api.post(
            "/api/v1/sources/crm/preview", files={"file": ("crm.csv", csv.encode())}, data={"mapping": MAPPING}
        )
    assert answer.status_code == 200, answer.text
    return list(answer.json()["rows"])


def test_preview_lists_probabilistic_candidates(live: LiveAccord) -> None:
    source(live.rt, "crm")
    crowd, _ = population(live)
    ann = crowd[0]
    csv = f"crm_id,firstName,lastName,birthday\nc1,{ann['firstName']},{ann['lastName']},{ann['birthday']}\n"
    assert preview(live, csv)[0]["candidates"] == []  # no model yet
    train(live)
    rows = preview(live, csv)
    assert rows[0]["profiles"] == []  # no identifier matches: by identifiers alone it would be a new profile
    candidates = rows[0]["candidates"]
    assert candidates, rows[0]
    assert candidates[0]["profile_id"] == profile_id(live, "p0")
    assert 0.5 <= candidates[0]["probability"] <= 1
