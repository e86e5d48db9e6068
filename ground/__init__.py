"""The ground floor of catalog-sync: what every layer needs and that imports nothing of the project.

    ground       the error tree, the version, shop-agnostic HTTP pieces (Retry-After, backoff, user agent), paging
    config       settings and source definitions                       (imports ground)
    connectors   shop knowledge: one module per platform               (imports ground, config)
    worker       state, planning, convergence, the catalog client, CLI (imports everything below)

A module belongs here only if at least two layers above need it and it knows nothing of shops, the catalog API,
settings or the state database. Anything with an opinion about one of those belongs to that layer.
"""
