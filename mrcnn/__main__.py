"""python -m mrcnn"""

import sys

from mrcnn.cli import main

sys.exit(main())
