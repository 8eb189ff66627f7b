"""Benchmarks run by ``python manage.py benchmark <name>``: each module defines
``add_arguments(parser)`` (optional) and ``run(out, **options)``, and prints its figures."""
