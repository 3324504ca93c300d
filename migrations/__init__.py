"""The schema, as numbered plain SQL files (``NNNN_description.sql``) applied in order.

A package only so that the ``.sql`` files ship as package data in a wheel and are found with
``importlib.resources`` (``reconciler.db.load_migrations``); there is no Python here.
"""
