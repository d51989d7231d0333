"""Monitor: periodic samples of a serving box (GPU, swap, pressure, the server)
judged against thresholds, as live text, JSON lines or Prometheus text.
"""
