"""``python -m hierclr ...`` is ``hierclr ...``."""
import sys

from hierclr.cli import main

sys.exit(main())
