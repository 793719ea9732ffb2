"""Built-in passes, one module per pass; the module name is the pass name with '_' for '-'.

Importing this package imports nothing; ``qcompiler.pm.registry`` imports each module on first
lookup so that ``@register_pass`` runs.
"""
