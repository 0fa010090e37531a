"""``python -m selfsup``: the ``selfsup`` command."""

from selfsup.console import main

main()
