"""LayoutLLM end to end on a tiny Shapes config: the gligen recipe, the policy's REINFORCE stage, plans from the
offline planner and from an OpenAI-compatible endpoint (a loopback server), drawing, the layout metrics."""
from __future__ import annotations

import copy
import json

import pytest
import yaml

from openai_server import FakeOpenAI
from workflow_harness import snakemake, tiny_config, write_config


def layoutllm_config(base_url: str) -> dict:
    config = tiny_config()
    config["pretrained"]["clip"] = {"source": "trained", "recipe": "clip", "dataset": "shapes_a", "steps": 10,
                                    "batch_size": 32, "width": 32, "layers": 2, "projection_dim": 16}
    config["pretrained"]["gligen"] = {"source": "trained", "recipe": "gligen", "dataset": "shapes_a", "steps": 6,
                                      "batch_size": 8, "channels": [16, 32], "head_dim": 16,
                                      "prediction_type": "v_prediction", "text_encoder": "clip"}
    common = {"system": "layoutllm", "dataset": "shapes_a",
              "inputs": {"drawer": {"asset": "gligen"}, "clip": {"asset": "clip"}},
              "candidates": {"cand_number": 8, "train_number": 8, "seed": 0},
              "plan": {"planner": "offline_shapes", "shot_number": 2, "parser": "compat", "relations": "shapes"},
              "sample": {"prompt_sets": ["test"], "steps": 3, "cfg": 2.0, "gen_bsz": 8, "num_images": 8},
              "evaluate": {"families": ["shapes", "layout", "fidelity"], "extractor": "shapes-cnn",
                           "extractor_asset": "cnn_a", "metrics": ["fid"]},
              "resources": {"gpu": 0, "mem_mb": 2000, "runtime": 10, "cpus_per_task": 1}}
    policy = {**copy.deepcopy(common),
              "reward": {"iou": 10, "similarity": 10, "detector": 1, "draw_steps": 2, "cfg": 2.0},
              "train": {"epochs": 2, "batch_size": 4, "lr": 1e-2, "save_every": 2, "log_every": 1}}
    random_pick = copy.deepcopy(common)
    random_pick["policy"] = {"select": "random"}
    llm = copy.deepcopy(random_pick)
    llm["plan"].update(planner="llm", parser="tolerant", llm={"model": "fake-planner", "base_url": base_url,
                                                               "api_key_env": None, "retries": 2})
    config["experiments"] = {"layoutllm": policy, "layoutllm_random": random_pick, "layoutllm_llm": llm}
    config["run"] = list(config["experiments"])
    return config


def _answer(body: dict) -> str:
    """A JSON layout naming the query's first object (the tolerant parser reads it; compat would not)."""
    from t2i.layout.planner import shapes_objects

    query = body["messages"][-1]["content"].rsplit("input:", 1)[1]
    objects = shapes_objects(query) or [{"name": "red circle"}]
    return json.dumps([{"name": o["name"], "box": [0.1 + 0.3 * i, 0.2, 0.3, 0.3]} for i, o in enumerate(objects[:3])])


@pytest.mark.slow
def test_workflow_trains_the_policy_plans_draws_and_scores_layouts(tmp_path):
    with FakeOpenAI(answer=_answer, fail_first=1, fail_status=429) as server:
        write_config(tmp_path, layoutllm_config(server.base_url))
        snakemake(tmp_path, "--cores", "2")
        results = tmp_path / "results"
        asked = len(server.requests)
        # a sampling knob reruns the drawing, never the planning: no new request, the plans untouched
        plans = (results / "layoutllm_llm" / "layouts" / "test.jsonl").read_text()
        config = layoutllm_config(server.base_url)
        config["experiments"]["layoutllm_llm"]["sample"]["cfg"] = 3.0
        write_config(tmp_path, config)
        snakemake(tmp_path, "--cores", "2")
        assert len(server.requests) == asked
        assert (results / "layoutllm_llm" / "layouts" / "test.jsonl").read_text() == plans
    assert asked == 16 + 1  # one request per test prompt, and the 429 retried

    assert (results / "pretrained" / "gligen" / "unet" / "config.json").is_file()
    assert json.loads((results / "pretrained" / "gligen" / "unet" / "config.json").read_text())[
        "_class_name"] == "RelationUNet2DConditionModel"
    from t2i.systems.layoutllm import load_policy

    policy = load_policy(results / "layoutllm" / "train" / "model", {"policy": {"embedding_size": 128}}, 16)
    assert policy.linear.weight.shape == (128, 16)
    log = [json.loads(line) for line in open(results / "layoutllm" / "train" / "model" / "train_log.jsonl")]
    assert log and all("reward" in row for row in log)
    for exp in ("layoutllm", "layoutllm_random", "layoutllm_llm"):
        rows = [json.loads(line) for line in open(results / exp / "layouts" / "test.jsonl")]
        assert len(rows) == 16 and all(r["layout"] and len(r["examples"]) == 2 for r in rows)
        metrics = json.loads((results / exp / "metrics" / "test.json").read_text())
        assert 0 <= metrics["layout"]["plan_miou"] <= 1 and metrics["layout"]["n"] == 8
        index = [json.loads(line) for line in open(results / exp / "samples" / "test" / "index.jsonl")]
        assert all(r["layout"] and (results / exp / "samples" / "test" / r["extras"]["boxes"]).is_file()
                   for r in index)
    llm_rows = [json.loads(line) for line in open(results / "layoutllm_llm" / "layouts" / "test.jsonl")]
    assert all(r["answer"].startswith("[{") for r in llm_rows)  # JSON answers, read by the tolerant parser
    assert not (results / "layoutllm_random" / "train").exists()  # random selection trains nothing
    assert "layout.plan_miou" in (results / "report" / "metrics.csv").read_text()


def test_paper_config_dry_run_plans_fetch_assemble_convert_select_plan_draw_evaluate(tmp_path):
    from pathlib import Path

    from workflow_harness import planned_jobs

    root = Path(__file__).resolve().parents[1]
    jobs = planned_jobs(tmp_path, "--configfile", str(root / "configs" / "layoutllm.yaml"))
    by_rule: dict[str, set[str]] = {}
    for rule, output in jobs:
        by_rule.setdefault(rule, set()).add(output)
    sets = ["numerical", "spatial", "semantic", "mixed", "no_relation"]
    assert by_rule == {
        "pretrained": {f"results/pretrained/{a}" for a in ("clip_vit_l14", "layoutllm_gligen", "layoutllm_policy",
                                                           "layoutllm_candidates")},
        "dataset": {"results/datasets/coco_nss1k/images"},
        "prepare": {"results/layoutllm_nss1k/prepared"},
        "plan": {f"results/layoutllm_nss1k/layouts/{s}.jsonl" for s in sets},
        "sample": {f"results/layoutllm_nss1k/samples/{s}" for s in sets},
        "evaluate": {f"results/layoutllm_nss1k/metrics/{s}.json" for s in sets},
        "report": {"results/report/index.html"},
    }  # the policy comes from the model role: no train job
