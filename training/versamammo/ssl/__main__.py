"""``python -m training.versamammo.ssl --config FILE [--set key=value ...]`` (torchrun-friendly)."""
from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def main(argv: list[str] | None = None) -> int:
    from training import distributed as du
    from training.config import TrainConfigError, load_train_config
    from training.versamammo.ssl.train import run_ssl

    parser = argparse.ArgumentParser(prog="python -m training.versamammo.ssl",
                                     description="VersaMammo stage 1 (DINOv2-style SSL of the ViT teacher)")
    parser.add_argument("--config", "-c", default=None, help="TOML training configuration")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        help="override a key, e.g. --set ssl.epochs=2 (repeatable)")
    parser.add_argument("--max-iterations", type=int, default=None,
                        help="stop after this many iterations in total (checkpointed; run again to resume)")
    args = parser.parse_args(argv)
    overrides = {}
    for item in args.overrides:
        if "=" not in item:
            parser.error(f"--set expects section.key=value, got {item!r}")
        key, value = item.split("=", 1)
        overrides[key.strip()] = _value(value.strip())
    try:
        cfg = load_train_config(args.config, overrides)
    except TrainConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO if du._env_int("RANK", 0) == 0 else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    path = run_ssl(cfg, max_iterations=args.max_iterations)
    if du._env_int("RANK", 0) == 0:
        print(f"ssl output: {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
