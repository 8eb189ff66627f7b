# The test process's own VAR_DIR and secret key are set by the plugin tests/isolation.py (loaded
# with -p from pyproject.toml): pytest-django imports the settings before this file is read.
