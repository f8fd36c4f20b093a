"""A tiny LPD workflow config: the Shapes SD3 base, the decomposer, its one-query ablation and the two
compositions of the base alone, each stage in seconds."""
from __future__ import annotations

import copy

from workflow_harness import tiny_config


def lpd_config(prompt_sets=("long",)) -> dict:
    config = tiny_config()
    config["pretrained"]["clip"] = {"source": "trained", "recipe": "clip", "dataset": "shapes_a", "steps": 10,
                                    "batch_size": 32, "width": 32, "layers": 2, "projection_dim": 16}
    config["pretrained"]["sd3"] = {"source": "trained", "recipe": "sd3", "dataset": "shapes_a", "steps": 12,
                                   "batch_size": 16, "layers": 1, "heads": 2, "head_dim": 16, "t5_max_length": 16,
                                   "text_encoder": "clip", "text_encoder_3": "minilm"}
    common = {"system": "lpd", "dataset": "shapes_a", "inputs": {"base": {"asset": "sd3"}},
              "text": {"clip_max_length": 8, "token_length": 48},
              "sample": {"prompt_sets": list(prompt_sets), "steps": 2, "cfg": 2.0, "gen_bsz": 8, "num_images": 8},
              "evaluate": {"extractor": "shapes-cnn", "extractor_asset": "cnn_a", "metrics": ["fid"]},
              "resources": {"gpu": 0, "mem_mb": 2000, "runtime": 10, "cpus_per_task": 1}}
    train = {"steps": 6, "batch_size": 4, "accumulate": 2, "lr": 1e-3, "cache_text": True, "save_every": 3,
             "log_every": 2, "validation_every": 3, "validation_steps": 2, "seed": 0, "mixed_precision": "no"}
    lpd = {**copy.deepcopy(common), "decomposer": {"num_components": 2, "num_tokens": 4, "heads": 2, "layers": 1},
           "data": {"image_size": None}, "train": train}
    one = copy.deepcopy(lpd)
    one["decomposer"].update(num_components=1, num_tokens=8)
    base, sentences = copy.deepcopy(common), copy.deepcopy(common)
    base["sample"]["compose"], sentences["sample"]["compose"] = "prompt", "sentences"
    config["experiments"] = {"lpd": lpd, "lpd_one": one, "lpd_base": base, "lpd_sentences": sentences}
    config["run"] = list(config["experiments"])
    return config
