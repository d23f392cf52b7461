"""What the server tells its operator: Prometheus metrics (metrics.py) and request-tagged logs (logs.py).

No HTTP here: apis/metrics.py serves GET /metrics and measures the HTTP side.
"""
