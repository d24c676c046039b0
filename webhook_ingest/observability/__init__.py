"""Metric families shared by every process, the multiprocess directory that
gunicorn's and the prefork worker's processes count into, and JSON logs."""
