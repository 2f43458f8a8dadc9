"""Conformance suites parametrized over the registries: a new target, backend, pass, family, searcher or
objective is tested here the moment it registers, without an edit to this file."""

from __future__ import annotations

import dataclasses
import inspect
import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from pydantic import BaseModel, ValidationError

from bitnas.api import BACKENDS, FAMILIES, OBJECTIVES, PASSES, SEARCHERS, TARGETS, Objective
from bitnas.backends.base import Measurement
from bitnas.config import validate_config
from bitnas.errors import ConfigError, MissingDependencyError, UnsupportedBackendError
from bitnas.passes.subbyte import INT4_RUNTIMES
from bitnas.pipeline import Pass
from bitnas.space import Candidate, Gene, LayerSpec, SearchSpace
from bitnas.supernets.qat import BatchQuant, set_bq_calibrating

EXECUTING = [n for n, b in BACKENDS.items() if not b.simulated]
SIMULATED = [n for n, b in BACKENDS.items() if b.simulated]


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """The tiny nets here run fastest on one thread (and do not fight other processes for the cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _runtime_or_skip(cls: type) -> None:
    if not cls.available():
        pytest.skip(f"backend '{cls.name}' needs its runtime: pip install {cls.package}")


# ---------------------------------------------------------------------------------------------- targets
@pytest.mark.parametrize("name", sorted(TARGETS))
def test_target_record_is_complete_and_consistent(name):
    t = TARGETS[name]
    assert t.name == name
    assert t.description.strip()
    if t.backend is None:  # analytic: nothing measures or models it, so nothing is measured
        assert not t.has_lut and t.simulated and not t.energy
    else:
        assert t.backend in BACKENDS, f"target '{name}' names unknown backend '{t.backend}'"
        assert t.simulated == BACKENDS[t.backend].simulated, "simulated is the backend's to answer"
    assert isinstance(t.bit_options, tuple) and t.bit_options
    for bits in t.bit_options:
        assert isinstance(bits, tuple) and len(bits) == 2, bits
        assert all(type(b) is int and 1 <= b <= 32 for b in bits), bits
    assert len(set(t.bit_options)) == len(t.bit_options)
    assert isinstance(t.verify_backends, tuple)
    for runtime in t.verify_backends:
        assert runtime in BACKENDS, f"target '{name}' verifies on unknown backend '{runtime}'"
        assert not BACKENDS[runtime].simulated, f"target '{name}' verifies on simulated backend '{runtime}'"
    if t.int4_weights:
        assert set(t.verify_backends) <= INT4_RUNTIMES, "an INT4 artifact is verified where INT4 is read"


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_target_is_frozen(name):
    t = TARGETS[name]
    for f in dataclasses.fields(t):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(t, f.name, getattr(t, f.name))


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_target_makes_its_backend(name):
    t = TARGETS[name]
    if t.backend is None:  # analytic: asking it for a backend is one clear error naming the target
        with pytest.raises(ConfigError, match=f"target '{name}' is analytic"):
            t.make_backend(threads=1)
        return
    _runtime_or_skip(BACKENDS[t.backend])
    backend = t.make_backend(threads=1)
    assert isinstance(backend, BACKENDS[t.backend])
    assert backend.threads == 1
    assert backend.fingerprint()["backend"] == t.backend
    bit_options = getattr(backend, "bit_options", None)
    if callable(bit_options):  # a backend that knows what it executes: the target may not claim more
        assert set(t.bit_options) <= {tuple(b) for b in bit_options()}


# ---------------------------------------------------------------------------------------------- backends
@pytest.fixture(scope="module")
def conv_relu(tmp_path_factory):
    """A tiny Conv+Relu model, an input for it, and ONNX Runtime's output on it."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Conv", ["input", "w", "b"], ["conv_out"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["conv_out"], ["output"], name="relu")]
    inits = [numpy_helper.from_array(rng.standard_normal((3, 2, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.standard_normal(3).astype(np.float32), "b")]
    graph = helper.make_graph(nodes, "conv_relu",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 2, 6, 6])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 3, 6, 6])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path = tmp_path_factory.mktemp("conv_relu") / "conv_relu.onnx"
    onnx.save(model, str(path))
    x = {"input": rng.standard_normal((1, 2, 6, 6)).astype(np.float32)}
    ref = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, x)[0]
    assert (ref > 0).any() and (ref == 0).any()  # the Relu really clips
    return path, x, ref


_compiled: dict[str, tuple] = {}


def compiled(name, conv_relu):
    """(backend, runner) for the tiny model, compiled once per backend."""
    if name not in _compiled:
        cls = BACKENDS[name]
        _runtime_or_skip(cls)
        backend = cls(threads=1)
        _compiled[name] = backend, backend.compile(conv_relu[0])
    return _compiled[name]


@pytest.mark.parametrize("name", sorted(BACKENDS))
def test_backend_declares_itself(name):
    cls = BACKENDS[name]
    assert cls.name == name and cls.package
    assert isinstance(cls.simulated, bool)
    ok = cls.available()
    assert isinstance(ok, bool)
    if ok:
        cls(threads=1).require()
    else:
        with pytest.raises(MissingDependencyError, match=cls.package):
            cls(threads=1).require()


@pytest.mark.parametrize("name", EXECUTING)
def test_backend_runs_a_tiny_model_like_onnxruntime(name, conv_relu):
    _, x, ref = conv_relu
    _, runner = compiled(name, conv_relu)
    out = runner(x)
    assert isinstance(out, list) and len(out) == 1
    assert out[0].shape == ref.shape
    np.testing.assert_allclose(out[0], ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", EXECUTING)
def test_backend_timer_runs_one_inference(name, conv_relu):
    path, x, _ = conv_relu
    backend, runner = compiled(name, conv_relu)
    timer = backend.timer(path, x, runner)
    assert callable(timer)
    for _ in range(2):
        timer()


@pytest.mark.parametrize("name", EXECUTING)
def test_backend_measure_returns_finite_positive_figures(name, conv_relu):
    path, x, _ = conv_relu
    backend, _ = compiled(name, conv_relu)
    m = backend.measure(path, x, warmup=1, repeats=4, rounds=2)
    assert isinstance(m, Measurement) and m.n == 4
    for v in (m.median_ms, m.p10_ms, m.mean_ms):
        assert math.isfinite(v) and v > 0
    assert math.isfinite(m.iqr_ms) and m.iqr_ms >= 0
    assert m.p10_ms <= m.median_ms


@pytest.mark.parametrize("name", EXECUTING)
def test_backend_fingerprint_names_it(name, conv_relu):
    backend, _ = compiled(name, conv_relu)
    fp = backend.fingerprint()
    assert fp["backend"] == name and fp["threads"] == 1


@pytest.mark.parametrize("name", SIMULATED)
def test_simulated_backend_refuses_onnx_and_models_layers(name, conv_relu):
    backend = BACKENDS[name](threads=1)
    with pytest.raises(UnsupportedBackendError):
        backend.compile(conv_relu[0])
    assert backend.fingerprint()["backend"] == name
    m = backend.profile(LayerSpec("conv", 8, 16, 3, 1, 1, 8, "relu", w_bits=8, a_bits=8))
    assert isinstance(m, Measurement)
    assert math.isfinite(m.median_ms) and m.median_ms > 0


# ---------------------------------------------------------------------------------------------- passes
@pytest.mark.parametrize("name", sorted(PASSES))
def test_pass_config_is_frozen_strict_and_documented(name):
    cls = PASSES[name]
    assert issubclass(cls, Pass)
    config = cls.Config
    assert issubclass(config, BaseModel)
    assert config.model_config.get("frozen") is True, f"{name}.Config is not frozen"
    assert config.model_config.get("extra") == "forbid", f"{name}.Config accepts unknown keys"
    for field_name, field in config.model_fields.items():
        assert field.description and field.description.strip(), f"{name}.{field_name} lacks a description"
    with pytest.raises(ConfigError, match="unknown key 'no_such_key'"):
        validate_config(config, {"no_such_key": 1}, f"pass {name}")
    default = config()
    for field_name in config.model_fields:
        with pytest.raises(ValidationError):
            setattr(default, field_name, getattr(default, field_name))


@pytest.mark.parametrize("name", sorted(PASSES))
def test_pass_builds_from_its_default_config(name):
    cls = PASSES[name]
    p = cls()
    assert p.name == name
    assert p.config == cls.Config()
    assert callable(p.run)
    with pytest.raises(ConfigError, match="unknown key 'no_such_key'"):
        cls(no_such_key=1)


def test_an_abstract_pass_is_not_registered():
    class AbstractProbePass(Pass):  # no run(): abstract
        pass

    try:
        assert inspect.isabstract(AbstractProbePass)
        assert "AbstractProbePass" not in PASSES
    finally:
        PASSES._units.pop("AbstractProbePass", None)  # leave the registry as it was


# ---------------------------------------------------------------------------------------------- families
def _family_spaces():
    return [pytest.param(f, s, id=f"{f}-{s}") for f, fam in FAMILIES.items() for s in sorted(fam.spaces())]


def default_image_size(family, space: str) -> int:
    """The input size the space's definition defaults to, at most 32 (the digits at 32x32 when the family does
    not say): conformance is about structure; the ImageNet-size spaces are checked at 224 by their own tests."""
    factory = getattr(family, "space_factories", {}).get(space)
    if factory is not None:
        size = getattr(factory(), "image_size", None)
        if size:
            return min(int(size), 32)
    return 32


def _candidates(space, n=10, seed=0):
    rng = np.random.default_rng(seed)
    return [space.largest(), space.smallest()] + [space.sample(rng) for _ in range(n)]


@pytest.fixture(scope="module")
def supernets():
    cache = {}

    def get(family: str, space: str):
        if (family, space) not in cache:
            torch.manual_seed(0)
            fam = FAMILIES[family]
            size = default_image_size(fam, space)
            net = fam.build(space, in_channels=1, image_size=size, num_classes=10)
            cache[family, space] = net.eval(), size
        return cache[family, space]

    return get


@pytest.mark.parametrize(("family", "space"), _family_spaces())
def test_family_layers_carry_policy_bits_and_known_keys(family, space, supernets):
    net, _ = supernets(family, space)
    for attr in ("space", "layers", "all_layer_specs", "extract"):
        assert hasattr(net, attr), f"supernet of {family}/{space} lacks '{attr}'"
    assert isinstance(net.space, SearchSpace) and net.space.policy_genes
    known = {s.key for s in net.all_layer_specs()}
    assert known
    policy_genes = {g.name for g in net.space.policy_genes}
    for c in _candidates(net.space):
        layers = net.layers(c)
        assert layers, f"{family}/{space}: no layers for {c.id}"
        names = [s.name for s in layers]
        assert all(names) and len(set(names)) == len(names), f"layer names must be unique: {names}"
        policy = c.policy_dict
        for s in layers:
            if s.name in policy_genes:
                assert s.bits == tuple(policy[s.name]), f"{s.name}: {s.bits} but its gene says {policy[s.name]}"
            else:
                assert s.bits == (32, 32), f"{s.name} is no policy gene but has bits {s.bits}"
            assert s.with_bits((32, 32)).key in known, f"{s.name}: {s.key} is not in all_layer_specs()"


def _batches(size: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    return [torch.zeros(2, 1, size, size), torch.randn(2, 1, size, size, generator=g)]


@pytest.mark.parametrize(("family", "space"), _family_spaces())
def test_family_extract_equals_the_supernet_forward(family, space, supernets):
    """Eval mode. A QAT supernet's BatchQuant activation quantizers take each batch's own range until they
    are calibrated, and the subnet copies them: so the two are compared uncalibrated on each batch, then
    calibrated on one batch and run on another (the state a trained QAT supernet is in)."""
    net, size = supernets(family, space)
    num_classes = 10
    for i, c in enumerate(_candidates(net.space)):
        sub = net.extract(c).eval()
        with torch.no_grad():
            for x in _batches(size, i):
                y = sub(x)
                assert y.shape == (2, num_classes)
                assert torch.isfinite(y).all()
                torch.testing.assert_close(y, net(x, c), rtol=1e-4, atol=1e-4)
    if not any(isinstance(m, BatchQuant) for m in net.modules()):
        return
    g = torch.Generator().manual_seed(1)
    try:
        for c in _candidates(net.space, n=4, seed=1):
            calib, x = torch.randn(8, 1, size, size, generator=g), torch.randn(2, 1, size, size, generator=g)
            with torch.no_grad():
                set_bq_calibrating(net, True)
                net(calib, c)
                set_bq_calibrating(net, False)
                torch.testing.assert_close(net.extract(c).eval()(x), net(x, c), rtol=1e-4, atol=1e-4)
    finally:
        set_bq_calibrating(net, True)  # clear the running ranges again
        set_bq_calibrating(net, False)


# ---------------------------------------------------------------------------------------------- searchers
def small_space() -> SearchSpace:
    """Four architectures (one gene conditional on another) and a two-layer INT8/float policy."""
    both = ((32, 32), (8, 8))
    return SearchSpace("small", [
        Gene("depth", (1, 2)),
        Gene("width", (4, 8)),
        Gene("kernel1", (3, 5), active_if=("depth", 2)),
        Gene("l0", both, kind="policy"),
        Gene("l1", both, kind="policy", active_if=("depth", 2)),
    ])


OBJ = [Objective("acc", "max", cheap=False), Objective("cost", "min")]


def _cheap(space):
    def cheap(c: Candidate) -> dict[str, float]:
        return {"cost": float(space.encode(c).sum())}

    return cheap


@pytest.mark.parametrize("name", sorted(SEARCHERS))
def test_searcher_asks_candidates_of_its_space(name):
    cls = SEARCHERS[name]
    if getattr(cls, "needs_supernet", False):
        pytest.skip(f"searcher '{name}' trains on a supernet (covered by tests/test_searcher_conformance.py)")
    space = small_space()
    s = cls(space, OBJ, seed=0, pop_size=4, cheap=_cheap(space))
    for _ in range(2):
        asked = s.ask()
        assert asked, f"searcher '{name}' asked for nothing"
        for c in asked:
            assert isinstance(c, Candidate)
            assert space.validate(c) == c
        values = np.array([[-float(space.encode(c)[0]), float(space.encode(c).sum())] for c in asked])
        s.tell(asked, values)


# ---------------------------------------------------------------------------------------------- objectives
@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_objective_declares_name_sense_and_computation(name):
    o = OBJECTIVES[name]
    assert isinstance(o, Objective)
    assert o.name == name
    assert o.sense in ("min", "max")
    assert o.description.strip()
    if o.cheap:
        assert callable(o.compute), f"cheap objective '{name}' has no compute"
        inspect.signature(o.compute).bind(None, [])  # compute(problem, layers)
