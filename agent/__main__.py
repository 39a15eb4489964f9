"""`python -m agent`: the same as `goldilocks-agent`."""

import sys

from agent.main import main

sys.exit(main())
