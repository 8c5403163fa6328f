"""Load the spec_tck plugin's collection hook here, whether or not the entry point is installed.

The hook is first-result, so a second registration through the ``pytest11`` entry point is
harmless.
"""

from spec_tck.pytest_plugin import pytest_pycollect_makeitem as pytest_pycollect_makeitem
