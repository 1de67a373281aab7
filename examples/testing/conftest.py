"""Makes `release_steps` importable for the example's tests."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
