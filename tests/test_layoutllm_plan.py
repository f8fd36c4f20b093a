"""LayoutLLM's planning side: candidate files, example selection, the policy's REINFORCE step, the offline
planner, relation triplets."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from t2i.layout.examples import CandidateFileError, read_candidates, write_candidates
from t2i.layout.planner import offline_shapes_answer, shapes_objects
from t2i.layout.policy import (load_policy_weights, random_examples, reinforce_loss, sample_examples,
                               top_examples)
from t2i.layout.relations import shapes_relations
from t2i.models.policy import PolicyNetwork


def test_candidate_file_round_trips_in_the_original_structure(tmp_path):
    examples = [{"id": "a", "caption": "a red circle", "objects": [{"name": "red circle", "box": [0.1, 0.2, 0.3, 0.4]}]},
                {"id": "b", "caption": "two blue squares", "objects": [
                    {"name": "blue square", "box": [0.0, 0.0, 0.25, 0.25]},
                    {"name": "blue square", "box": [0.5, 0.5, 0.25, 0.25]}]}]
    write_candidates(tmp_path / "c.json", examples, 32)
    raw = json.loads((tmp_path / "c.json").read_text())
    assert raw["id"] == ["a", "b"]
    assert raw["data"][0]["bbox"] == [pytest.approx([0.25, 0.4, 0.3, 0.4])]  # centre format, as the original's
    back = read_candidates(tmp_path / "c.json")
    for e, b in zip(examples, back):
        assert b["caption"] == e["caption"]
        for o, p in zip(e["objects"], b["objects"]):
            assert p["name"] == o["name"] and p["box"] == pytest.approx(o["box"])


@pytest.mark.parametrize("content, message", [
    ("not json", "not a readable JSON"),
    ('{"id": [1], "data": []}', "at least one example"),
    ('{"id": [1, 2], "data": [{"captions": "x", "label": [], "bbox": []}]}', "2 ids for 1 examples"),
    ('{"data": [{"captions": "x", "label": ["a"], "bbox": [[0.1, 0.2]]}]}', r"data\[0\]: bbox"),
    ('{"data": [{"label": ["a"], "bbox": [[0.1, 0.2, 0.3, 0.4]]}]}', r"data\[0\]: no captions"),
])
def test_bad_candidate_files_name_the_entry(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(CandidateFileError, match=message):
        read_candidates(path)


def test_selection_top_k_best_last_and_random():
    scores = torch.tensor([0.1, 3.0, -1.0, 2.0, 0.5])
    assert top_examples(scores, 2) == [3, 1]  # the best sits next to the query
    picks = random_examples(np.random.default_rng(0), 32, 2)
    assert len(set(picks)) == 2 and all(0 <= p < 32 for p in picks)


def test_a_reinforce_step_moves_probability_towards_rewarded_examples():
    torch.manual_seed(0)
    policy = PolicyNetwork(in_dim=6, embedding_size=4)
    query, candidates = torch.randn(1, 6), torch.randn(8, 6)
    optimizer = torch.optim.SGD(policy.parameters(), lr=0.05)
    rewarded = 5

    def prob() -> float:
        with torch.no_grad():
            return torch.softmax(policy.scores(query, candidates)[0], -1)[rewarded].item()

    before, rng = prob(), np.random.default_rng(0)
    for _ in range(40):
        picks, logp = sample_examples(policy.scores(query, candidates)[0], 2, 1.0, rng)
        expected = torch.log_softmax(policy.scores(query, candidates)[0], -1)[picks].sum()
        assert logp.item() == pytest.approx(expected.item())  # the sum of the picks' log p
        loss = reinforce_loss([logp], [1.0 if rewarded in picks else 0.0])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert prob() > before + 0.2


def test_policy_weights_load_as_the_original_saves_them(tmp_path):
    linear = torch.nn.Linear(768, 128)
    torch.save(linear.state_dict(), tmp_path / "policy_weights.pt")
    policy = load_policy_weights(tmp_path / "policy_weights.pt", 768, 128)
    assert torch.equal(policy.linear.weight, linear.weight)
    torch.save({"weight": torch.zeros(64, 768)}, tmp_path / "wrong.pt")
    with pytest.raises(ValueError, match="Linear\\(768 -> 128\\)"):
        load_policy_weights(tmp_path / "wrong.pt", 768, 128)


def test_the_offline_planner_places_objects_with_the_examples_boxes():
    from t2i.layout.parse import parse_layout

    assert [o["name"] for o in shapes_objects("two green triangles and a large yellow square")] == \
        ["green triangle", "green triangle", "yellow square"]
    left = {"caption": "x", "objects": [{"name": "a", "box": [0.05, 0.4, 0.22, 0.22]},
                                        {"name": "b", "box": [0.7, 0.4, 0.22, 0.22]}]}
    right = {"caption": "y", "objects": [{"name": "a", "box": [0.7, 0.1, 0.34, 0.34]}]}
    prompt = "a red circle to the left of a blue square"
    best_left = parse_layout(offline_shapes_answer(prompt, [right, left]), "compat").objects
    best_right = parse_layout(offline_shapes_answer(prompt, [left, right]), "compat").objects
    assert [o["name"] for o in best_left] == ["red circle", "blue square"]
    assert best_left[0]["box"][0] < best_left[1]["box"][0]  # the best example's arrangement
    assert best_right[0]["box"] == pytest.approx([0.7, 0.1, 0.34, 0.34])  # the other best example's first box
    sized = parse_layout(offline_shapes_answer("a small red circle", [right]), "compat").objects
    assert sized[0]["box"][2] == pytest.approx(0.22)  # resized to the stated size, centre kept


def test_shapes_relation_triplets():
    assert shapes_relations("a large cyan circle above a small red triangle") == ["cyan circle above red triangle"]
    assert shapes_relations("The green triangle is to the left of the yellow square. Two blue circles.") == \
        ["green triangle to the left of yellow square"]
    assert shapes_relations("two blue triangles") == []
