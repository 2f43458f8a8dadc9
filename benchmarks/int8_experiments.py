"""Graph experiments for ``int8_speedup.py --size 224`` (issue 13): what bitnas's INT8 artifact would gain
from Q/DQ placed as the runtimes' integer kernels want it. Not the compiler: each experiment is named after
what it changes, and is timed beside the compiler's own artifact.

- ``bitnas+qadd``: bitnas's artifact with each residual Add that reaches a QuantizeLinear (directly, or
  through ResNet's Relu after the Add) made to write only to Q, its float readers reading a DequantizeLinear
  of it, so the Add reads DQ outputs and writes to Q: the pattern ONNX Runtime fuses into QLinearAdd (its
  own quantizer emits it; INC does not quantize Add on the CPU execution provider).
"""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import helper

EXPERIMENTS = ("bitnas+qadd",)


def requantize_adds(src: Path, dst: Path) -> int:
    """``bitnas+qadd``: make each Add that reaches a QuantizeLinear (directly, or through a Relu as in
    ResNet's Conv, Add, Relu) write only to Q and its float readers read a DQ of it; return how many Adds.

    Add -> Q: the Add's float readers get a DequantizeLinear of that Q. Add -> Relu -> Q: a Q with the Relu's
    Q parameters (zero point at 0: it clips as Relu does) goes between Add and Relu, with its DQ feeding the
    Relu (which ONNX Runtime then drops), and the Relu's float readers get a DQ of its Q.
    """
    model = onnx.load(str(src))
    g = model.graph
    outputs = {o.name for o in g.output}
    readers: dict[str, list] = {}
    for n in g.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    nodes, done = list(g.node), 0

    def reroute(y: str, q, after) -> None:
        """Float readers of ``y`` read DQ(q) instead; the DQ goes right after ``after``."""
        floats = [c for c in readers.get(y, []) if c.op_type != "QuantizeLinear"]
        if not floats:
            return
        dq = helper.make_node("DequantizeLinear", [q.output[0], *q.input[1:]], [y + "_requant"],
                              name=y + "_requant")
        for c in floats:
            for k, name in enumerate(c.input):
                if name == y:
                    c.input[k] = dq.output[0]
            readers.setdefault(dq.output[0], []).append(c)
        readers[y] = [c for c in readers.get(y, []) if c.op_type == "QuantizeLinear"]
        nodes.insert(nodes.index(after) + 1, dq)

    for n in list(nodes):
        if n.op_type != "Add" or n.output[0] in outputs:
            continue
        y = n.output[0]
        users = readers.get(y, [])
        qs = [c for c in users if c.op_type == "QuantizeLinear"]
        if qs:
            reroute(y, qs[0], qs[0])
            done += 1
            continue
        if len(users) == 1 and users[0].op_type == "Relu" and users[0].output[0] not in outputs:
            relu = users[0]
            rqs = [c for c in readers.get(relu.output[0], []) if c.op_type == "QuantizeLinear"]
            if not rqs:
                continue
            rq = rqs[0]
            q = helper.make_node("QuantizeLinear", [y, *rq.input[1:]], [y + "_q"], name=y + "_q")
            dq = helper.make_node("DequantizeLinear", [y + "_q", *rq.input[1:]], [y + "_dq"], name=y + "_dq")
            relu.input[0] = dq.output[0]
            at = nodes.index(n) + 1
            nodes[at:at] = [q, dq]
            reroute(relu.output[0], rq, rq)
            done += 1
    del g.node[:]
    g.node.extend(nodes)
    onnx.save(model, str(dst))
    return done
