#!/usr/bin/env python3
"""Verify a sessionadmin audit bundle (``manage.py audit_verify --export FILE``) with nothing
but Python 3.11+ and the ``cryptography`` package: no Django, no database, no sessionadmin
install. The verdicts come from the same code the server uses (``sessionadmin/ledger_verify.py``,
loaded by path; copy it next to this script to run it outside the repository).

    python tools/verify_audit_bundle.py BUNDLE [--checkpoints audit-checkpoints.jsonl]
        [--public-key KEY.pem]

Exit 0 and a one-line summary when the ledger is intact; 1 and the first failing entry (seq
and id) with what is wrong otherwise; 2 when the bundle cannot be read.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path
from typing import Any


def _load_verifier() -> Any:
    here = Path(__file__).resolve().parent
    for candidate in (here / "ledger_verify.py", here.parent / "sessionadmin" / "ledger_verify.py"):
        if candidate.exists():
            spec = importlib.util.spec_from_file_location("ledger_verify", candidate)
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            sys.modules["ledger_verify"] = module  # dataclasses look their module up
            spec.loader.exec_module(module)
            return module
    raise SystemExit("ledger_verify.py not found (next to this script or in ../sessionadmin/)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--checkpoints", type=Path, help="the checkpoint file kept outside the database (JSON lines)")
    parser.add_argument("--public-key", type=Path, help="PEM public key obtained separately; must match the bundle's")
    args = parser.parse_args(argv)
    lv = _load_verifier()
    try:
        extra = []
        if args.checkpoints:
            with args.checkpoints.open(encoding="utf-8") as fh:
                extra = lv.read_checkpoints(fh)
        with args.bundle.open(encoding="utf-8") as fh:
            if args.public_key:
                header = json.loads(fh.readline())
                if header.get("public_key", "").strip() != args.public_key.read_text().strip():
                    print("FAILED: the bundle's public key is not the one given with --public-key")
                    return 1
                fh.seek(0)
            verdict = lv.verify_bundle(fh, extra_checkpoints=extra)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        print(f"cannot read the bundle: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    print(verdict.summary())
    return 0 if verdict.ok else 1


if __name__ == "__main__":
    sys.exit(main())
