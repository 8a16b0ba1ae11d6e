"""The parts of the ``loadbalancing`` exporter: the hash ring, routing of one batch, resolvers."""
