"""``python -m decoders.serve``: the ``decoders serve`` command (see :mod:`decoders.serve.cli`)."""

from decoders.serve.cli import main

main()
