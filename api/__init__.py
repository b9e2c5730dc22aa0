"""hubsched's HTTP API, version 1: the NinjaAPI at /api/v1/, its authentication, API tokens and error shape."""
