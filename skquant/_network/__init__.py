"""The network layer: the Network protocol, its NumPy adapters, and every whole-model
driver.
"""
