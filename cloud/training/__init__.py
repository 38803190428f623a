"""Model making: training a detector with Ultralytics, INT8 quantization, graph rewrites
and throughput measurement, each producing or measuring a lineguard bundle.

torch and ultralytics are imported lazily inside these modules, so importing the package
costs nothing; the collector and the fleet API never import it.
"""
