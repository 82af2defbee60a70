"""In-test HTTP peers that speak real cloud APIs to the real client libraries."""
