"""The profile: YAML read with positions, the schema's frozen models, ``extends:``
loading, resolution against the catalog (``Spec``), and the bundled library.
"""
