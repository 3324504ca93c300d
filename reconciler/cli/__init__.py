"""The ``reconciler`` command line's sub-apps (registered in ``cli.py``)."""
