"""Mixed-precision supernet training: LSQ and BatchQuant quantizers, resumable training, ``bitnas train``, ViT compile."""

import json
import math

import numpy as np
import pytest
import torch
import yaml

from bitnas.cli import main
from bitnas.io import sha256_file
from bitnas.supernets import build_supernet
from bitnas.supernets.data import Dataset, load_digits
from bitnas.supernets.qat import BatchQuant, LSQWeight, calibrate
from bitnas.supernets.qat_train import default_schedule, restrict, train_qat_supernet, uniform_policy


@pytest.fixture(scope="module")
def digits16():
    return load_digits(image_size=16)


def small(data: Dataset, n_train: int = 160, n_val: int = 120) -> Dataset:
    return Dataset(data.name, data.x_train[:n_train], data.y_train[:n_train], data.x_val[:n_val],
                   data.y_val[:n_val], data.num_classes)


def test_lsq_quantizes_to_the_signed_grid_and_nests_under_slicing():
    torch.manual_seed(0)
    w = torch.randn(8, 4, 5, 5, requires_grad=True)
    q = LSQWeight(3)
    wq = q(w)
    levels = torch.round(wq / q.step).detach()
    assert levels.min() >= -4 and levels.max() <= 3
    torch.testing.assert_close(wq, levels * q.step)
    assert len(torch.unique(levels)) <= 8
    # the whole shared tensor is quantized before slicing: a subnet's weights are a slice of it
    torch.testing.assert_close(q(w)[:4, :2, 1:4, 1:4], q(w[:4, :2, 1:4, 1:4].contiguous()))
    wq.sum().backward()
    assert w.grad is not None and q.step.grad is not None  # straight-through to weights, learned step


def test_batchquant_uses_eq8_batch_extremes_and_residuals_start_at_identity():
    torch.manual_seed(0)
    x = torch.randn(16, 3, 5, 5)
    x[:, 0] += 4.0
    bq = BatchQuant(2)
    assert float(bq.gamma.detach()) == 1.0 and float(bq.beta.detach()) == 0.0
    lo, hi = bq.extremes(x)
    per_c = x.transpose(0, 1).reshape(3, -1)
    assert math.isclose(float(lo), float(per_c.min(1).values.mean()), rel_tol=1e-6)
    assert math.isclose(float(hi), float(per_c.max(1).values.mean()), rel_tol=1e-6)
    bq.train()
    y = bq(x)
    step = (hi - lo) / 3
    zero = torch.clamp(-torch.round(lo / step), 0, 3)
    torch.testing.assert_close(y, (torch.clamp(torch.round(x / step + zero), 0, 3) - zero) * step)
    assert len(torch.unique(y)) <= 4
    # calibration keeps a running mean of the estimates, which eval mode then uses
    bq.calibrating = True
    bq(x)
    bq(x * 2)
    bq.calibrating = False
    bq.eval()
    assert math.isclose(float(bq.run_max), 1.5 * float(hi), rel_tol=1e-5)
    assert int(bq.n_calib) == 2


def test_restricted_policies_follow_the_bit_schedule():
    net = build_supernet("qfa-mbv3-tiny", "mbv3", image_size=16)
    sp = net.space
    rng = np.random.default_rng(0)
    assert default_schedule(sp, 9, 3) == [(3, (32,)), (2, (2, 3, 4, 32)), (4, (2, 3, 4))]
    for _ in range(10):
        c = restrict(sp, sp.sample(rng), (2, 3, 4), rng)
        searchable = [g.name for g in sp.policy_genes if len(g.options) > 1]
        assert all(w in (2, 3, 4) and a in (2, 3, 4) for n, (w, a) in c.policy if n in searchable)
    u = uniform_policy(sp, sp.largest(), 2)
    assert u.policy_dict["s0.b0.dw"] == (2, 2) and u.policy_dict["stem"] == (32, 32)
    assert u.policy_dict["classifier"] == (8, 8)


def test_killed_mid_epoch_resumes_to_the_same_result(digits16, tmp_path):
    data = small(digits16, n_train=96, n_val=64)
    schedule = [(1, (2, 3, 4, 32)), (1, (2, 3, 4))]

    def run(ckpt, kill_at=None):
        torch.manual_seed(123)
        net = build_supernet("qfa-mbv3-tiny", "mbv3", image_size=16)

        def on_step(epoch, step, steps, loss):
            if kill_at is not None and (epoch, step) == kill_at:
                raise KeyboardInterrupt  # the process dies right after a mid-epoch checkpoint

        res = train_qat_supernet(net, data, schedule, batch_size=32, n_random=0, seed=7, checkpoint=ckpt,
                                 checkpoint_every=1, on_step=on_step)
        return net, res

    full_net, full = run(tmp_path / "full.pt")
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "killed.pt", kill_at=(1, 2))
    state = torch.load(tmp_path / "killed.pt", weights_only=True)
    assert (state["epoch"], state["step"]) == (1, 2)  # mid-epoch checkpoint of the second epoch
    resumed_net, resumed = run(tmp_path / "killed.pt")
    assert resumed["history"] == full["history"]
    for (k, a), (_, b) in zip(full_net.state_dict().items(), resumed_net.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=k)


def test_bq_calibration_and_bn_recalibration_run_on_the_extracted_subnet(digits16):
    net = build_supernet("qfa-mbv3-tiny", "mbv3", image_size=16)
    c = uniform_policy(net.space, net.space.smallest(), 4)
    static = net.extract(c)
    batches = [torch.from_numpy(digits16.x_train[i:i + 32]) for i in range(0, 96, 32)]
    calibrate(static, batches)
    bqs = [m for m in static.modules() if isinstance(m, BatchQuant)]
    assert bqs and all(int(m.n_calib) == len(batches) for m in bqs)
    bns = [m for m in static.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(int(m.num_batches_tracked) == len(batches) for m in bns)
    assert not any(m.training for m in static.modules())


def _project(folder, **sections):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "project.yaml").write_text(yaml.safe_dump(sections))
    return folder


@pytest.fixture(scope="module")
def vit_run(tmp_path_factory):
    """A run folder whose project trains the vit family on 16x16 digits (``bitnas train --project``)."""
    run = _project(tmp_path_factory.mktemp("vit"), family={"name": "vit", "space": "vit-tiny"},
                   data={"name": "digits", "image_size": 16}, train={"epochs": 4, "batch_size": 32, "n_random": 0})
    assert main(["train", "--project", str(run)]) == 0
    return run


def test_cli_trains_the_vit_family_with_checkpoint_and_history(vit_run, capsys):
    capsys.readouterr()
    hist = json.loads((vit_run / "train.json").read_text())
    assert [h["epoch"] for h in hist["history"]] == [1, 2, 3, 4]
    assert hist["history"][-1]["acc_largest"] > 0.6  # 10 classes: chance is 0.1
    ckpt = vit_run / "supernet.pt"
    state = torch.load(ckpt, weights_only=True)
    assert state["epoch"] == 4 and state["fingerprint"] == hist["fingerprint"]
    before = sha256_file(ckpt)
    # rerunning resumes from the finished checkpoint instead of training again
    assert main(["train", "--project", str(vit_run / "project.yaml")]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed == {"checkpoint": str(ckpt), "fingerprint": hist["fingerprint"]}
    assert sha256_file(ckpt) == before
    assert json.loads((vit_run / "train.json").read_text())["history"] == hist["history"]


def test_cli_rejects_a_bad_family_with_one_error(tmp_path, capsys):
    run = _project(tmp_path / "run", family={"name": "gru", "space": "x"}, train={"epochs": 1})
    assert main(["train", "--project", str(run)]) == 2
    err = capsys.readouterr().err
    assert "unknown family 'gru'" in err and err.count("error:") == 1
    assert not (run / "supernet.pt").exists()


def test_vit_subnet_compiles_through_the_int8_path(vit_run, tmp_path):
    import onnx

    from bitnas.passes import AssignBitwidths, ExportOnnx, ExtractSubnet, IncStaticPtq, RecalibrateBn, Verify
    from bitnas.passes.inc_ptq import quantized_nodes
    from bitnas.pipeline import PassContext, Sequential

    data = load_digits(image_size=16)
    net = build_supernet("vit-tiny", "vit", in_channels=1, image_size=16, num_classes=10)
    net.load_state_dict(torch.load(vit_run / "supernet.pt", weights_only=True)["model"])
    c = net.space.largest()
    names = [s.name for s in net.layers(c) if s.name in c.policy_dict]
    c = net.space.make(c.arch_dict, {n: ((8, 8) if i % 3 else (32, 32)) for i, n in enumerate(names)})
    ctx = PassContext(workdir=tmp_path, inputs={"supernet": net, "data": data}, results={})
    pipe = Sequential([ExtractSubnet(), RecalibrateBn(), ExportOnnx(), AssignBitwidths(), IncStaticPtq(),
                       Verify(backends=("ort",), repeats=10, warmup=1, rounds=1)])
    out = pipe.run(c, ctx)
    model = onnx.load(str(out.path))
    assert quantized_nodes(model) == {n for n in names if c.policy_dict[n] == (8, 8)}
    measured = ctx.results["measured"]
    assert measured["accuracy_fp32"] > 0.5
    assert abs(measured["accuracy"] - measured["accuracy_fp32"]) < 0.1
