"""hubsched's own model: what each worker and beat process last reported of the numbers only it holds."""

from hubsched.metrics.models import ProcessReport

__all__ = ["ProcessReport"]
