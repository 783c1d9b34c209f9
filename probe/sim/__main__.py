"""`python -m probe.sim up ...`: the same as `probe sim up ...`."""

import sys

from probe.cli import main

if __name__ == "__main__":
    sys.argv[1:1] = ["sim"]
    main()
