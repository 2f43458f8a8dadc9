"""The papers' joint architecture + bitwidth spaces, built from their published choices.

Every cardinality is computed by ``SearchSpace.cardinality`` from these gene definitions; the papers'
printed sizes are only checked against (tests/test_spaces_papers.py), never typed in here.
"""

from __future__ import annotations

from collections.abc import Sequence

from bitnas.space import FLOAT_BITS, Bits, Gene, SearchSpace

INT8_OR_FLOAT: tuple[Bits, ...] = ((8, 8), FLOAT_BITS)


def _wa(w_bits: Sequence[int], a_bits: Sequence[int]) -> tuple[Bits, ...]:
    return tuple((w, a) for w in w_bits for a in a_bits)


# --------------------------------------------------------------------------- BOMP-NAS (Table I)
def bomp_mbv2(name: str, widths: Sequence[float]) -> SearchSpace:
    """BOMP-NAS's MobileNetV2 CIFAR space: 7 bottlenecks, conv2 filters, per-layer weight bits {4..8}.

    Each bottleneck has one kernel, width multiplier, expansion factor and repetition count shared by its
    repetitions; bottlenecks 2-6 may repeat 0-5 times (0 removes the bottleneck). Every conv of every
    repetition, the stem, conv2 and the classifier choose weight bits in {4,...,8} with INT8 activations;
    a repetition's expansion conv exists only when the expansion factor is at least 2.
    """
    bits = _wa((4, 5, 6, 7, 8), (8,))
    kernels = (2, 3, 4, 5, 6, 7)
    genes: list[Gene] = [Gene("stem", bits, "policy")]
    for b in range(1, 8):
        n = f"b{b}"
        reps = (1,) if b in (1, 7) else (0, 1, 2, 3, 4, 5)
        expands = (1,) if b == 1 else (1, 2, 3, 4, 5, 6)
        genes.append(Gene(f"{n}.reps", reps))
        cond = (f"{n}.reps", 1)
        genes.append(Gene(f"{n}.kernel", kernels, "arch", cond))
        genes.append(Gene(f"{n}.width", tuple(widths), "arch", cond))
        genes.append(Gene(f"{n}.expand", expands, "arch", cond))
        for r in range(1, max(reps) + 1):
            rc = (f"{n}.reps", r)
            if max(expands) >= 2:
                genes.append(Gene(f"{n}.r{r}.expand_conv", bits, "policy", (rc, (f"{n}.expand", 2))))
            genes.append(Gene(f"{n}.r{r}.dw", bits, "policy", rc))
            genes.append(Gene(f"{n}.r{r}.project", bits, "policy", rc))
    genes.append(Gene("conv2.filters", (128, 256, 512, 1024, 1280)))
    genes.append(Gene("conv2", bits, "policy"))
    genes.append(Gene("classifier", bits, "policy"))
    return SearchSpace(name, genes, (
        "BOMP-NAS MobileNetV2 for CIFAR (Table I): per bottleneck kernel {2..7}, width multiplier, "
        "expansion {1..6}, repetitions {0..5}; conv2 filters; weight bits {4..8} per layer, INT8 activations"))


def bomp_mbv2_cifar10() -> SearchSpace:
    return bomp_mbv2("bomp-mbv2-cifar10", (0.01, 0.05, 0.1, 0.2, 0.3))


def bomp_mbv2_cifar100() -> SearchSpace:
    return bomp_mbv2("bomp-mbv2-cifar100", (0.25, 0.5, 0.75, 1.0, 1.3))


# --------------------------------------------------------------------------- APQ (sections 3.1-3.2)
APQ_STAGES: tuple[int, ...] = (24, 32, 64, 96, 160)  # MobileNetV2 stage widths B with elastic depth
APQ_LAST: int = 320  # the single last block


def apq_mbv2() -> SearchSpace:
    """APQ's once-for-all MobileNetV2: 21 searchable blocks, kernel {3,5,7}, mid channels 4B..6B by 8.

    B is the block's base (output) channel number; 5 stages of depth {2,3,4} plus the last block. Each block
    chooses (W, A) bits in {4,6,8} for its pointwise convs and for its depthwise conv (APQ's encoding).
    """
    bits = _wa((4, 6, 8), (4, 6, 8))
    genes: list[Gene] = []

    def block(n: str, base: int, cond) -> None:
        genes.append(Gene(f"{n}.kernel", (3, 5, 7), "arch", cond))
        genes.append(Gene(f"{n}.mid", tuple(range(4 * base, 6 * base + 1, 8)), "arch", cond))
        genes.append(Gene(f"{n}.pw", bits, "policy", cond))
        genes.append(Gene(f"{n}.dw", bits, "policy", cond))

    for s, base in enumerate(APQ_STAGES):
        genes.append(Gene(f"s{s}.depth", (2, 3, 4)))
        for b in range(4):
            block(f"s{s}.b{b}", base, None if b < 2 else (f"s{s}.depth", b + 1))
    block("last", APQ_LAST, None)
    return SearchSpace("apq-mbv2", genes, (
        "APQ once-for-all MobileNetV2: depth {2,3,4} per stage, per block kernel {3,5,7} and mid channels "
        "4B..6B step 8; per block W/A bits in {4,6,8} for pointwise and depthwise convs"))


# --------------------------------------------------------------------------- QFA / BatchQuant (section 4)
def mbv3_genes(n_stages: int, depths: Sequence[int], kernels: Sequence[int], expands: Sequence[int],
               conv_bits: Sequence[Bits], stem_bits: Sequence[Bits], head_bits: Sequence[Bits],
               classifier_bits: Sequence[Bits]) -> list[Gene]:
    """Genes of a MobileNetV3 space: per stage depth, per block kernel/expansion and its 3 convs' bits."""
    genes: list[Gene] = [Gene("stem", tuple(stem_bits), "policy")]
    for s in range(n_stages):
        genes.append(Gene(f"s{s}.depth", tuple(depths)))
        for b in range(max(depths)):
            cond = None if b < min(depths) else (f"s{s}.depth", b + 1)
            genes.append(Gene(f"s{s}.b{b}.kernel", tuple(kernels), "arch", cond))
            genes.append(Gene(f"s{s}.b{b}.expand", tuple(expands), "arch", cond))
            for part in ("expand_conv", "dw", "project"):
                genes.append(Gene(f"s{s}.b{b}.{part}", tuple(conv_bits), "policy", cond))
    genes.append(Gene("head", tuple(head_bits), "policy"))
    genes.append(Gene("classifier", tuple(classifier_bits), "policy"))
    return genes


def qfa_mbv3() -> SearchSpace:
    """QFA's MobileNetV3 space: 5 stages x 4 blocks (depth {2,3,4}), kernel {3,5,7}, expansion {3,4,6}.

    Each block's 3 convs choose W and A bits in {2,3,4} independently; the first conv stays float, the
    final layers take 8-bit weights and activations (fixed, single-option genes).
    """
    genes = mbv3_genes(5, (2, 3, 4), (3, 5, 7), (3, 4, 6), _wa((2, 3, 4), (2, 3, 4)),
                       (FLOAT_BITS,), ((8, 8),), ((8, 8),))
    return SearchSpace("qfa-mbv3", genes, (
        "QFA/BatchQuant MobileNetV3: 5 stages x 4 blocks, last 1-2 blocks skippable, kernel {3,5,7}, "
        "expansion {3,4,6}; W and A bits {2,3,4} per conv; first conv float, last layers 8-bit"))


# --------------------------------------------------------------------------- SimQ-NAS (Tables 1-3)
TRANSFORMER_LINEARS: tuple[str, ...] = ("q", "k", "v", "o", "fc1", "fc2")


def transformer_genes(layer_opts: Sequence[int], heads: Sequence[int], ffn: Sequence[int],
                      prefix: Sequence[str], suffix: Sequence[str], bits: Sequence[Bits]) -> list[Gene]:
    """Genes of an elastic encoder: layer count, per layer heads and FFN size, per linear layer bits."""
    genes: list[Gene] = [Gene(n, tuple(bits), "policy") for n in prefix]
    genes.append(Gene("layers", tuple(layer_opts)))
    for i in range(max(layer_opts)):
        cond = None if i < min(layer_opts) else ("layers", i + 1)
        genes.append(Gene(f"l{i}.heads", tuple(heads), "arch", cond))
        genes.append(Gene(f"l{i}.ffn", tuple(ffn), "arch", cond))
        for lin in TRANSFORMER_LINEARS:
            genes.append(Gene(f"l{i}.{lin}", tuple(bits), "policy", cond))
    genes.extend(Gene(n, tuple(bits), "policy") for n in suffix)
    return genes


def simq_bert() -> SearchSpace:
    """SimQ-NAS BERT-base: layers {6..12}, heads {6,8,10,12} and FFN {1024,2048,3072} per layer.

    INT8/FP32 per quantizable layer: the 3 embedding lookups, 6 linears per encoder layer, pooler and
    classifier (77 at full depth).
    """
    genes = transformer_genes(range(6, 13), (6, 8, 10, 12), (1024, 2048, 3072),
                              ("embed.word", "embed.position", "embed.token_type"), ("pooler", "classifier"),
                              INT8_OR_FLOAT)
    return SearchSpace("simq-bert", genes, "SimQ-NAS elastic BERT-base (Table 2), INT8/FP32 per layer")


def simq_vit() -> SearchSpace:
    """SimQ-NAS ViT-base: layers {10,11,12}, per layer heads and FFN; INT8/FP32 per conv/linear (74)."""
    genes = transformer_genes((10, 11, 12), (6, 8, 10, 12), (1024, 2048, 3072), ("patch_embed",),
                              ("classifier",), INT8_OR_FLOAT)
    return SearchSpace("simq-vit", genes, "SimQ-NAS elastic ViT-base (Table 2), INT8/FP32 per layer")


def simq_beit3() -> SearchSpace:
    """SimQ-NAS BEiT-3-base (vision path): layers {11,12}, per layer heads and FFN; INT8/FP32 per layer."""
    genes = transformer_genes((11, 12), (6, 8, 10, 12), (2048, 2560, 3072), ("patch_embed",),
                              ("classifier",), INT8_OR_FLOAT)
    return SearchSpace("simq-beit3", genes, "SimQ-NAS elastic BEiT-3-base (Table 2), INT8/FP32 per layer")


RESNET50_BASE_DEPTHS: tuple[int, ...] = (2, 2, 4, 2)


def resnet_genes(base_depths: Sequence[int], extra_depths: Sequence[int], expands: Sequence[float],
                 widths: Sequence[float], bits: Sequence[Bits]) -> list[Gene]:
    """Genes of an OFA-ResNet space: stem, per stage extra depth, per block expansion, 6 width multipliers.

    The stem is conv1 (width gene ``stem.w0``), an optional residual conv (``stem.extra`` in {0,1}) and
    conv3 (``stem.w1``); stage ``s`` has ``base + extra`` bottlenecks of 3 convs, the first with a
    projection shortcut conv.
    """
    genes: list[Gene] = [Gene("stem.w0", tuple(widths)), Gene("stem.w1", tuple(widths)),
                         Gene("stem.extra", (0, 1)), Gene("stem.conv1", tuple(bits), "policy"),
                         Gene("stem.conv2", tuple(bits), "policy", ("stem.extra", 1)),
                         Gene("stem.conv3", tuple(bits), "policy")]
    for s, base in enumerate(base_depths):
        genes.append(Gene(f"s{s}.extra", tuple(extra_depths)))
        genes.append(Gene(f"s{s}.width", tuple(widths)))
        for b in range(base + max(extra_depths)):
            cond = None if b < base + min(extra_depths) else (f"s{s}.extra", b - base + 1)
            genes.append(Gene(f"s{s}.b{b}.expand", tuple(expands), "arch", cond))
            for part in ("conv1", "conv2", "conv3") + (("shortcut",) if b == 0 else ()):
                genes.append(Gene(f"s{s}.b{b}.{part}", tuple(bits), "policy", cond))
    genes.append(Gene("classifier", tuple(bits), "policy"))
    return genes


def simq_ofa_resnet50() -> SearchSpace:
    """SimQ-NAS OFA-ResNet50 (Table 3): extra depth {0,1,2} x4 (+stem), expansion {0.2,0.25,0.35} x18, widths x6."""
    genes = resnet_genes(RESNET50_BASE_DEPTHS, (0, 1, 2), (0.2, 0.25, 0.35), (0.65, 0.8, 1.0), INT8_OR_FLOAT)
    return SearchSpace("simq-ofa-resnet50", genes,
                       "SimQ-NAS OFA-ResNet50 (Table 3): elastic depth, expansion, width; INT8/FP32 per layer")


PAPER_SPACES = {
    "bomp-mbv2-cifar10": bomp_mbv2_cifar10,
    "bomp-mbv2-cifar100": bomp_mbv2_cifar100,
    "apq-mbv2": apq_mbv2,
    "qfa-mbv3": qfa_mbv3,
    "simq-bert": simq_bert,
    "simq-vit": simq_vit,
    "simq-beit3": simq_beit3,
    "simq-ofa-resnet50": simq_ofa_resnet50,
}
