"""GCE backend tests against a fake Compute Engine REST server."""
