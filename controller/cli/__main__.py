"""`python -m controller.cli`: the same as the `goldilocks` console script."""

from controller.cli import main

main()
