"""`make bench`: the throughput, latency and growth harness (issue 6). Not installed."""
