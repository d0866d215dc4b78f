"""clusterkit reference app: master/worker API cluster node (see README.md)."""

__version__ = "0.1.0"
