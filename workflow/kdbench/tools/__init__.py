"""Tools around the results: the provenance audit, generated docs, and headless Chromium for the report."""
