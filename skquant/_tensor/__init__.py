"""The quantized-tensor core: alphabets, bit packing, the fixed-point codec, the file
format.
"""
