"""The conformance suite: every example Adobe documents for an endpoint the exporter calls, replayed against the
running exporter (ids and times replaced), each test naming the Adobe page it comes from. The examples, as
stored in ``data/``, are listed in ``examples.py``."""
