"""``t2i`` command line: ``t2i status`` shows which stages of each experiment are done, stale or missing."""
from __future__ import annotations

import argparse

from t2i.config import load_config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="t2i")
    sub = parser.add_subparsers(dest="command", required=True)
    status = sub.add_parser("status", help="done / stale / missing per experiment and stage (run in the repo root)")
    status.add_argument("--configfile", default=None, help="config merged over config.yaml, as snakemake's --configfile")
    args = parser.parse_args(argv)

    from t2i.status import format_table, run_summary, summarize

    files = ["config.yaml"] + ([args.configfile] if args.configfile else [])
    config = load_config(*files)
    extra = ["--configfile", args.configfile] if args.configfile else []
    print(format_table(summarize(run_summary(extra), list(config["experiments"]))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
