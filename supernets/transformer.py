"""Elastic transformer encoder family (BERT/ViT style, SimQ-NAS's Table 2 dimensions) with patch embedding.

Elastic layers (the last layers skipped), heads per layer (the leading heads of the shared Q/K/V/output
projections) and FFN size per layer (the leading hidden units). Pre-norm encoder, class token, learned
position embedding. SimQ-NAS quantizes these networks post-training (INT8/FP32 per linear layer), so the
supernet trains in float; its static subnets run every linear as a 2-D ``Gemm`` so the skeleton's INT8
path quantizes them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bitnas.space import FLOAT_BITS, Bits, Candidate, LayerSpec, SearchSpace
from bitnas.supernets.paper_spaces import INT8_OR_FLOAT, transformer_genes
from bitnas.supernets.static import ConvUnit, StaticNet, TokenLinearUnit


@dataclass(frozen=True)
class TransformerDef:
    """Shape and choices of an elastic ViT; the space comes from ``paper_spaces.transformer_genes``."""

    name: str
    layer_opts: tuple[int, ...] = (2, 3)
    heads: tuple[int, ...] = (2, 4)
    ffn: tuple[int, ...] = (32, 64)
    embed_dim: int = 32
    head_dim: int = 8
    patch: int = 4
    in_channels: int = 1
    image_size: int = 16
    num_classes: int = 10
    bits: tuple[Bits, ...] = INT8_OR_FLOAT
    description: str = ""

    def space(self) -> SearchSpace:
        genes = transformer_genes(self.layer_opts, self.heads, self.ffn, ("patch_embed",), ("classifier",),
                                  self.bits)
        return SearchSpace(self.name, genes, self.description)

    @property
    def tokens(self) -> int:
        return (self.image_size // self.patch) ** 2 + 1


def vit_tiny(in_channels: int = 1, image_size: int = 16, num_classes: int = 10) -> TransformerDef:
    """SimQ-NAS's elastic ViT scaled to digits: 2-3 layers, 2 or 4 heads of 8, FFN 32 or 64 per layer."""
    return TransformerDef(name="vit-tiny", in_channels=in_channels, image_size=image_size, num_classes=num_classes,
                          description="elastic ViT for 16x16 digits: layers {2,3}, heads {2,4}, FFN {32,64}, "
                                      "INT8/FP32 per linear layer")


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, head_dim: int) -> torch.Tensor:
    b, t, _ = q.shape

    def split(z: torch.Tensor) -> torch.Tensor:
        return z.reshape(b, t, heads, head_dim).transpose(1, 2)

    att = torch.softmax(split(q) @ split(k).transpose(-2, -1) * head_dim ** -0.5, dim=-1)
    return (att @ split(v)).transpose(1, 2).reshape(b, t, heads * head_dim)


class Attention(nn.Module):
    """Scaled dot-product attention of ``heads`` heads (MatMul, Softmax, MatMul; no weights)."""

    def __init__(self, heads: int, head_dim: int):
        super().__init__()
        self.heads, self.head_dim = heads, head_dim

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return _attend(q, k, v, self.heads, self.head_dim)


class EncoderLayer(nn.Module):
    """Static pre-norm encoder layer; ``layer_name`` (``l0``) prefixes its LayerNorms and attention in ONNX."""

    def __init__(self, layer_name: str, ln1: nn.LayerNorm, q, k, v, o, ln2: nn.LayerNorm, fc1, fc2, heads: int,
                 head_dim: int):
        super().__init__()
        self.layer_name = layer_name
        self.ln1, self.q, self.k, self.v, self.o = ln1, q, k, v, o
        self.attention = Attention(heads, head_dim)
        self.ln2, self.fc1, self.fc2 = ln2, fc1, fc2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln1(x)
        x = x + self.o(self.attention(self.q(h), self.k(h), self.v(h)))
        return x + self.fc2(self.fc1(self.ln2(x)))


class Tokens(nn.Module):
    """Patch-embedding map to tokens, with class token and position embedding."""

    def __init__(self, cls: torch.Tensor, pos: torch.Tensor):
        super().__init__()
        self.cls = nn.Parameter(cls.detach().clone())
        self.pos = nn.Parameter(pos.detach().clone())
        self.patches = int(pos.shape[1]) - 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(2).transpose(1, 2)
        # the class token enters as a zero row padded in front plus a constant, the values a Concat would
        # give: OpenVINO 2026.4's CPU plugin miscomputes an INT8 conv whose output is concatenated with a
        # float tensor (the patch embedding's tokens with the class token)
        return F.pad(x, (0, 0, 1, 0)) + (F.pad(self.cls, (0, 0, 0, self.patches)) + self.pos)


class ClassHead(nn.Module):
    """Final LayerNorm (``ln`` in ONNX) and the class token."""

    layer_name = ""

    def __init__(self, ln: nn.LayerNorm):
        super().__init__()
        self.ln = ln

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ln(x)[:, 0]


def _copy_ln(ln: nn.LayerNorm) -> nn.LayerNorm:
    out = nn.LayerNorm(ln.normalized_shape, eps=ln.eps)
    out.load_state_dict(ln.state_dict())
    return out


def _slice_linear(fc: nn.Linear, out: int, inp: int) -> nn.Linear:
    lin = nn.Linear(inp, out)
    with torch.no_grad():
        lin.weight.copy_(fc.weight[:out, :inp])
        lin.bias.copy_(fc.bias[:out])
    return lin


class ElasticLayer(nn.Module):
    def __init__(self, d: TransformerDef):
        super().__init__()
        e, hmax = d.embed_dim, max(d.heads) * d.head_dim
        self.ln1, self.ln2 = nn.LayerNorm(e), nn.LayerNorm(e)
        self.q, self.k, self.v = nn.Linear(e, hmax), nn.Linear(e, hmax), nn.Linear(e, hmax)
        self.o = nn.Linear(hmax, e)
        self.fc1, self.fc2 = nn.Linear(e, max(d.ffn)), nn.Linear(max(d.ffn), e)


class TransformerSupernet(nn.Module):
    """Weight-sharing elastic ViT (``Supernet`` protocol); float, quantized after training as SimQ-NAS does."""

    family = "vit"

    def __init__(self, d: TransformerDef):
        super().__init__()
        if d.image_size % d.patch:
            from bitnas.errors import ConfigError

            raise ConfigError(f"{d.name}: image size {d.image_size} is not a multiple of the patch {d.patch}")
        self.d = d
        self.space = d.space()
        self.patch_embed = nn.Conv2d(d.in_channels, d.embed_dim, d.patch, d.patch)
        self.cls = nn.Parameter(torch.zeros(1, 1, d.embed_dim))
        self.pos = nn.Parameter(torch.randn(1, d.tokens, d.embed_dim) * 0.02)
        self.layers_ = nn.ModuleList(ElasticLayer(d) for _ in range(max(d.layer_opts)))
        self.ln = nn.LayerNorm(d.embed_dim)
        self.classifier = nn.Linear(d.embed_dim, d.num_classes)

    def _arch(self, candidate: Candidate) -> dict[str, Any]:
        return self.space.validate(candidate).arch_dict

    def forward(self, x: torch.Tensor, candidate: Candidate) -> torch.Tensor:
        arch, d = self._arch(candidate), self.d
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.pos
        for i in range(arch["layers"]):
            lay, h, f = self.layers_[i], arch[f"l{i}.heads"], arch[f"l{i}.ffn"]
            hd = h * d.head_dim
            z = lay.ln1(x)
            q, k, v = (F.linear(z, m.weight[:hd], m.bias[:hd]) for m in (lay.q, lay.k, lay.v))
            x = x + F.linear(_attend(q, k, v, h, d.head_dim), lay.o.weight[:, :hd], lay.o.bias)
            z = F.gelu(F.linear(lay.ln2(x), lay.fc1.weight[:f], lay.fc1.bias[:f]))
            x = x + F.linear(z, lay.fc2.weight[:, :f], lay.fc2.bias)
        return self.classifier(self.ln(x)[:, 0])

    def extract(self, candidate: Candidate) -> StaticNet:
        """A static float subnet with inherited weights, equal to ``forward(x, candidate)``."""
        arch, d = self._arch(candidate), self.d
        conv = nn.Conv2d(d.in_channels, d.embed_dim, d.patch, d.patch)
        conv.load_state_dict(self.patch_embed.state_dict())
        body: list[nn.Module] = [ConvUnit("patch_embed", conv, None, "none"), Tokens(self.cls, self.pos)]
        e = d.embed_dim
        for i in range(arch["layers"]):
            lay, h, f = self.layers_[i], arch[f"l{i}.heads"], arch[f"l{i}.ffn"]
            hd = h * d.head_dim
            body.append(EncoderLayer(
                f"l{i}", _copy_ln(lay.ln1),
                *(TokenLinearUnit(f"l{i}.{n}", _slice_linear(getattr(lay, n), hd, e)) for n in ("q", "k", "v")),
                TokenLinearUnit(f"l{i}.o", _slice_linear(lay.o, e, hd)),
                _copy_ln(lay.ln2),
                TokenLinearUnit(f"l{i}.fc1", _slice_linear(lay.fc1, f, e), "gelu"),
                TokenLinearUnit(f"l{i}.fc2", _slice_linear(lay.fc2, e, f)),
                h, d.head_dim))
        body.append(ClassHead(_copy_ln(self.ln)))
        body.append(TokenLinearUnit("classifier", _slice_linear(self.classifier, d.num_classes, e)))
        return StaticNet(body).eval()

    def layers(self, candidate: Candidate) -> list[LayerSpec]:
        """Patch embedding, per layer LayerNorms, Q/K/V, attention, output and FFN, the final LayerNorm and the
        classifier, in forward order."""
        c = self.space.validate(candidate)
        arch, pol, d = c.arch_dict, c.policy_dict, self.d
        t, e = d.tokens, d.embed_dim

        def spec(name, bits=FLOAT_BITS, **kw):
            return LayerSpec(name=name, **kw).with_bits(bits)

        out = [spec("patch_embed", pol["patch_embed"], op="conv", cin=d.in_channels, cout=e, kernel=d.patch,
                    stride=d.patch, hw=d.image_size)]
        for i in range(arch["layers"]):
            h, f = arch[f"l{i}.heads"], arch[f"l{i}.ffn"]
            hd = h * d.head_dim
            out.append(spec(f"l{i}.ln1", op="layernorm", cin=e, cout=e, hw=t))
            for n in ("q", "k", "v"):
                out.append(spec(f"l{i}.{n}", pol[f"l{i}.{n}"], op="dense", cin=e, cout=hd, hw=t))
            out.append(spec(f"l{i}.attention", op="attention", cin=hd, cout=hd, groups=h, hw=t))
            out.append(spec(f"l{i}.o", pol[f"l{i}.o"], op="dense", cin=hd, cout=e, hw=t, residual=True))
            out.append(spec(f"l{i}.ln2", op="layernorm", cin=e, cout=e, hw=t))
            out.append(spec(f"l{i}.fc1", pol[f"l{i}.fc1"], op="dense", cin=e, cout=f, hw=t, act="gelu"))
            out.append(spec(f"l{i}.fc2", pol[f"l{i}.fc2"], op="dense", cin=f, cout=e, hw=t, residual=True))
        out.append(spec("ln", op="layernorm", cin=e, cout=e, hw=t))
        out.append(spec("classifier", pol["classifier"], op="dense", cin=e, cout=d.num_classes, hw=1))
        return out

    def all_layer_specs(self) -> list[LayerSpec]:
        """Every distinct float LayerSpec any candidate of the space can produce (bits excluded)."""
        d = self.d
        t, e = d.tokens, d.embed_dim
        specs = [LayerSpec("conv", d.in_channels, e, kernel=d.patch, stride=d.patch, hw=d.image_size),
                 LayerSpec("layernorm", e, e, hw=t)]
        for h in d.heads:
            hd = h * d.head_dim
            specs += [LayerSpec("dense", e, hd, hw=t), LayerSpec("attention", hd, hd, groups=h, hw=t),
                      LayerSpec("dense", hd, e, hw=t, residual=True)]
        for f in d.ffn:
            specs += [LayerSpec("dense", e, f, hw=t, act="gelu"), LayerSpec("dense", f, e, hw=t, residual=True)]
        specs.append(LayerSpec("dense", e, d.num_classes, hw=1))
        return list({s.key: s for s in specs}.values())


def _register() -> None:
    from bitnas.supernets.families import BuiltinFamily, qat_train, register_family

    register_family(BuiltinFamily("vit", TransformerSupernet, {"vit-tiny": vit_tiny}, qat_train,
                                  "elastic ViT (SimQ-NAS)", {"default_optimizer": "adamw"}))


_register()
