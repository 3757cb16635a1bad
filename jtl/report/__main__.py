"""`python -m jtl.report DIR`: the same as `jtl report DIR`."""

import sys

from jtl.report import main

sys.exit(main())
