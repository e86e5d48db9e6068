"""catalog-sync's worker: state, planning, convergence, the catalog client and the admin command."""
