"""Causal LMs of any decoder family: building, loading and saving them, forward passes with taps on hidden
states, and q/k/v recorded through transformers' attention interface."""
