"""Metrics and reward models: COCO metrics, SPICE, BERTScore, perplexity, the sentiment classifier."""
