"""lakeinfer on Ray: the batch engine (``lakeinfer batch --engine ray``) and Ray Serve hosting
(``lakeinfer serve --engine ray``; from Python, :func:`deployment` is a Ray Serve application to
compose with your own deployments).

Needs ``pip install 'lakeinfer[ray]'`` on the driver and on every node of the cluster.
"""

from .serving import deployment

__all__ = ["deployment"]
