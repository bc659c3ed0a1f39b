"""``python -m minibatch``: the same as the ``minibatch`` command."""
from minibatch.cli import main

main()
