"""`python -m tokentrail`: the same as the `tokentrail` command."""

from tokentrail.cli import main

main()
