"""Serving the server half over the network (Ray Serve, Open Inference Protocol v2) and
exporting it for Triton. Ray is imported only when a service starts (the ``[serve]`` extra):
``catalog``, ``sessions`` and ``triton`` work without it."""
