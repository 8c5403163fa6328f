"""The registry lives in the package (spec_tck.components) so the CLI can report on it."""

from spec_tck.components import EXEMPT as EXEMPT
from spec_tck.components import PUBLISHERS as PUBLISHERS
from spec_tck.components import PublisherEntry as PublisherEntry
from spec_tck.components import shutdown_pool as shutdown_pool

__all__ = ["EXEMPT", "PUBLISHERS", "PublisherEntry", "shutdown_pool"]
