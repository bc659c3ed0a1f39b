# Sphinx configuration for the minibatch documentation: `sphinx-build docs docs/_build`.
project = 'minibatch'
author = 'minibatch authors'
copyright = '2020-2026, minibatch authors'
extensions = []
master_doc = 'index'
exclude_patterns = ['_build']
html_theme = 'alabaster'
