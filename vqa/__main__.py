"""``python -m vqa`` (used by ``accelerate launch -m vqa ...``)."""

import sys

from vqa.cli import main

sys.exit(main())
