"""HTTP handlers bound by operationId: translate HTTP <-> domain, nothing else."""
