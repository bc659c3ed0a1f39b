from setuptools import setup

# All metadata is in pyproject.toml; this shim keeps `python setup.py ...` and
# older tooling working.
setup()
