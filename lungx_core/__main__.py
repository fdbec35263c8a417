"""`python -m lungx_core` is the `lungx` command."""

from lungx_core.cli import main

main()
