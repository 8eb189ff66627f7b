"""``python -m bench <name> [options]`` or ``python -m bench all``: sets Django up on the
configured settings (``DATABASE_URL`` and the rest, as ``manage.py`` would) and runs
``bench.<name>.run``."""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys
from types import ModuleType

import bench


def available() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(bench.__path__) if not m.name.startswith("_"))


def load(name: str) -> ModuleType:
    return importlib.import_module(f"bench.{name}")


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="python -m bench", description="Run a benchmark and print its figures.")
    sub = top.add_subparsers(dest="name", required=True)
    for name in available():
        module = load(name)
        doc = (module.__doc__ or "").strip()
        sub_parser = sub.add_parser(name, help=doc.splitlines()[0] if doc else "")
        if hasattr(module, "add_arguments"):
            module.add_arguments(sub_parser)
    sub.add_parser("all", help="run every benchmark with its defaults")
    return top


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "sessionadmin.settings")
    import django

    django.setup()
    from django.core.management.base import CommandError, OutputWrapper
    from django.core.management.color import color_style

    from sessionadmin.bootstrap import has_secret_key, missing_key_message

    if not has_secret_key():  # the benchmarks' child processes need the same key
        sys.stderr.write(f"benchmark: {missing_key_message()}\n")
        return 1

    out, style = OutputWrapper(sys.stdout), color_style()
    options = vars(parser().parse_args(argv))
    name = options.pop("name")
    for each in available() if name == "all" else [name]:
        module = load(each)
        if name == "all":
            defaults = argparse.ArgumentParser()
            if hasattr(module, "add_arguments"):
                module.add_arguments(defaults)
            options = vars(defaults.parse_args([]))
        out.write(style.MIGRATE_HEADING(f"== benchmark {each}"))
        try:
            module.run(out, **options)
        except CommandError as exc:
            sys.stderr.write(f"benchmark {each}: {exc}\n")
            return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
