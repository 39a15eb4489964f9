"""`python -m controller`: the same as `goldilocks-controller`."""

from controller.launcher import main

main()
