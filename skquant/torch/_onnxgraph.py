"""Searches and edits of an exported ONNX graph around a layer's weight: where
the weight is, which nodes multiply by it, what else reads it, and the
replacement of a product."""

import numpy as np

from .._common._warn import warn


def find_weight(name, layer, inits, numpy_helper):
    """``(initializer name, transposed)`` of a layer's float weight in the graph."""
    if name in inits:
        return name, False
    W = layer.weight.detach().float().numpy()
    for key, init in inits.items():
        a = numpy_helper.to_array(init)
        if a.shape == W.shape and np.array_equal(a, W):
            return key, False
        if W.ndim == 2 and a.shape == W.T.shape and np.array_equal(a, W.T):
            return key, True
    return None


def consumers(graph, key):
    """``[(index, node)]`` of the nodes that multiply by weight ``key``, in order.

    The exporter writes a Linear as ``Gemm`` or as ``Transpose -> MatMul``, a
    convolution as ``Conv``: the weight is the node's second input, the data its
    first. Other nodes may read the weight too (a convolution without a bias
    reads its shape, for a zero bias), and a layer called twice has two products.
    """
    names = {key} | {graph.node[i].output[0] for i in transposes(graph, key)}
    found = [
        (i, node)
        for i, node in enumerate(graph.node)
        if node.op_type in ("Gemm", "MatMul", "Conv")
        and len(node.input) > 1
        and node.input[1] in names
    ]
    if not found:
        raise ValueError(f"no node of the exported graph multiplies by {key!r}.")
    return found


def transposes(graph, key):
    """Indices of the ``Transpose`` nodes of weight ``key``."""
    return [
        i
        for i, node in enumerate(graph.node)
        if node.op_type == "Transpose" and key in node.input
    ]


def read_elsewhere(graph, key):
    """Whether a node other than the products by weight ``key`` (and the
    ``Transpose`` that feeds them) reads it (``l(x) * l.weight.mean()``)."""
    ts = transposes(graph, key)
    own = {i for i, _ in consumers(graph, key)} | set(ts)
    names = {key} | {graph.node[i].output[0] for i in ts}
    return any(
        i not in own and names.intersection(node.input)
        for i, node in enumerate(graph.node)
    )


def replace_product(graph, index, key, nodes, helper):
    """Put ``nodes`` in place of node ``index`` (the product by weight ``key``),
    dropping the ``Transpose`` of ``key`` it leaves unused.

    The last of ``nodes`` writes the replaced node's output; where that node is
    a ``Gemm`` with a bias (its third input, when named), the product is written
    under another name and an ``Add`` of the bias gives the output.
    """
    old = graph.node[index]
    if old.op_type == "Gemm" and len(old.input) > 2 and old.input[2]:
        out = nodes[-1].output[0]
        nodes[-1].output[0] = f"{out}_unbiased"
        nodes = [
            *nodes,
            helper.make_node("Add", [f"{out}_unbiased", old.input[2]], [out]),
        ]
    ts = [graph.node[i] for i in transposes(graph, key)]
    del graph.node[index]
    for n in reversed(nodes):
        graph.node.insert(index, n)
    for t in ts:
        if not any(t.output[0] in n.input for n in graph.node):
            graph.node.remove(t)


def plain_gemm(node, helper):
    """Whether ``node`` is ``Gemm(x, W, b)`` computing ``x W^T + b``."""
    if node.op_type != "Gemm":
        return False
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    return (
        not attrs.get("transA", 0)
        and bool(attrs.get("transB", 0))
        and attrs.get("alpha", 1.0) == 1.0
        and attrs.get("beta", 1.0) == 1.0
    )


def bias_apart(graph, key, spatial, helper, numpy_helper):
    """Add the bias after each ``Conv`` (of ``spatial`` dimensions) or plain
    ``Gemm`` multiplying by weight ``key``, instead of inside it.

    ONNX Runtime's default optimiser rewrites a product whose input and weight
    come out of ``DequantizeLinear`` into integer kernels, its float bias then
    rounded to int32 at the input's scale times the weight's: a coarse input
    grid (2 to 4 bits) rounded the biases away (relative deviations of 0.02 to
    0.37). An ``Add`` after the product keeps them float.
    """
    for index, node in reversed(consumers(graph, key)):
        if len(node.input) < 3 or not node.input[2]:
            continue
        if node.op_type == "Conv":
            shape = f"{node.output[0]}_bias_shape"
            graph.initializer.append(
                numpy_helper.from_array(
                    np.array([1, -1] + [1] * spatial, np.int64), shape
                )
            )
            bias = f"{node.output[0]}_bias"
            new = [helper.make_node("Reshape", [node.input[2], shape], [bias])]
        elif plain_gemm(node, helper):
            bias, new = node.input[2], []
        else:
            continue
        out = node.output[0]
        node.output[0] = f"{out}_unbiased"
        del node.input[2]
        new.append(helper.make_node("Add", [f"{out}_unbiased", bias], [out]))
        for k, n in enumerate(new):
            graph.node.insert(index + 1 + k, n)


def warn_fixed(graph, free):
    """Warn about the axes of ``free`` (``{axis: name}``) that the file's input
    fixes: the model's forward gave them one size (the first axis of an unbatched
    example is a feature axis)."""
    dims = graph.input[0].type.tensor_type.shape.dim
    fixed = {
        a: dims[a].dim_value
        for a in free
        if a < len(dims) and not dims[a].dim_param and dims[a].dim_value
    }
    if fixed:
        axes, them = ("axes", "them") if len(fixed) > 1 else ("axis", "it")
        warn(
            f"export_onnx: the file fixes the input's {axes} "
            + ", ".join(f"{a} ({free[a]!r}) at {n}" for a, n in fixed.items())
            + f": the model's forward gives {them} one size. An example without a "
            "batch axis does that to its first axis (its sizes are the features): "
            "pass a batch (x[None] for one sample) to leave the batch free.",
            UserWarning,
        )
