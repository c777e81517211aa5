"""The weight and activation quantizers: memoryless (uniform, binary, ternary) and
data-driven (GPFQ, GPTQ, null-space).
"""
