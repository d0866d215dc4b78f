"""clusterkit's Python side that is neither engine nor app: the inventory model the pyinfra
engine, the tests, the scripts and the load tests share."""
