"""Stage 5, analysis: intervals and tests, power, fidelity, CKA and probes, tables and figures, the
generated headline and why, and the report's landing page."""
