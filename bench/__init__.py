"""`python -m bench`: engine latency, the in-process ceiling and end-to-end serving throughput tables."""
