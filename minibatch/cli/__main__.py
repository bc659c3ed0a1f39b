"""``python -m minibatch.cli``: the same as the ``minibatch`` command (and ``python -m minibatch``)."""
from minibatch.cli import main

main()
