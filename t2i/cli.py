"""``t2i`` command line: ``t2i status`` shows which stages of each experiment are done, stale or missing;
``t2i export-original`` writes a ``pixel_sdxl`` model folder in kohya-ss/pixel-space-sdxl's checkpoint layout."""
from __future__ import annotations

import argparse
from pathlib import Path

from t2i.config import load_config


def _status(args) -> int:
    from t2i.status import format_table, run_summary, summarize

    files = ["config.yaml"] + ([args.configfile] if args.configfile else [])
    config = load_config(*files)
    extra = ["--configfile", args.configfile] if args.configfile else []
    print(format_table(summarize(run_summary(extra), list(config["experiments"]))))
    return 0


def _export_original(args) -> int:
    from t2i.checkpoints.pixel_sdxl_original import write_original
    from t2i.models.folder import load_component, read_index
    from t2i.systems.pixel_sdxl import SYSTEM, UNET

    model = load_component(args.model_dir, UNET, system=SYSTEM)
    write_original(Path(args.out), model, meta=read_index(args.model_dir)["meta"])
    print(f"{args.out}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters in the original's layout "
          f"(model.diffusion_model.*), for its inference.py (.safetensors) or training (.pth)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="t2i")
    sub = parser.add_subparsers(dest="command", required=True)
    status = sub.add_parser("status", help="done / stale / missing per experiment and stage (run in the repo root)")
    status.add_argument("--configfile", default=None, help="config merged over config.yaml, as snakemake's --configfile")
    status.set_defaults(run=_status)
    export = sub.add_parser("export-original", help="a pixel_sdxl model folder (e.g. results/EXP/train/model) -> "
                                                    "kohya-ss/pixel-space-sdxl's checkpoint layout")
    export.add_argument("model_dir", help="the model folder")
    export.add_argument("out", help="the file to write: .safetensors (inference.py, post-hoc EMA) or .pth/.pt")
    export.set_defaults(run=_export_original)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    raise SystemExit(main())
