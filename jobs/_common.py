"""Shared entry-point glue for jobs/*.py: argparse → config → ray_pipeline → summary table."""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # under `ray job submit` the package comes with the working dir
    sys.path.insert(0, str(REPO))


def main(config_cls, runner_name: str, description: str, default_config: str, argv=None) -> int:
    from sew_pipeline import config, ray_pipeline
    cfg = config.parse_args(config_cls, argv, description, default_config=str(REPO / default_config))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from sew_pipeline.errors import UserError
    try:
        result = getattr(ray_pipeline, runner_name)(cfg)
    except UserError as exc:  # manifest, model, output, cluster plan: one line, no traceback
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"\n{description.splitlines()[0]}: run {result.run_id} → {result.output}")
    print(result.table())
    print("SUMMARY_JSON " + json.dumps(result.summary, sort_keys=True))
    return 0 if result.summary.get("ids_not_written", 0) == 0 else 1
