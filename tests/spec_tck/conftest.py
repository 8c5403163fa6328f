"""Load the spec_tck plugin's hooks here, whether or not the entry point is installed.

The collection hook is first-result and the reordering hook idempotent, so a second
registration through the ``pytest11`` entry point is harmless.
"""

from spec_tck.pytest_plugin import pytest_collection_modifyitems as pytest_collection_modifyitems
from spec_tck.pytest_plugin import pytest_pycollect_makeitem as pytest_pycollect_makeitem
