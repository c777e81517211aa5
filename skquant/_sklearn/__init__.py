"""The scikit-learn wrappers: a quantized MLP that predicts, pickles and grid-searches.
"""
