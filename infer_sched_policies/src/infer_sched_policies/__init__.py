"""Scheduler policies for infer: round_robin, priority, prefill_first, decode_first, static."""
