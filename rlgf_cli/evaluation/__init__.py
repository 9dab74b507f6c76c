"""Evaluation studies: compare policies, difficulty buckets, distillation, reports, learning curves."""
