"""A model file written by training carries its settings: inference and evaluation use them with no copied flags,
and a flag that contradicts the file is refused by name."""


import nibabel as nib
import pytest
import torch
from monai.bundle import ConfigWorkflow, ckpt_export

from workflows.bundle import config_file, run_workflow
from workflows.engine.model_file import model_settings
from workflows.data.synthetic_cases import generate_case

from .conftest import EVALUATE, TINY, TRAIN

INFERENCE = config_file("inference")


@pytest.fixture(scope="module")
def trained(lists, tmp_path_factory):
    ckpt = tmp_path_factory.mktemp("self_describing")
    workflow = ConfigWorkflow(config_file=TRAIN, workflow_type="train", run_id="training",
                              **{**TINY, "dataset_dir": str(lists), "ckpt_dir": str(ckpt), "chunk": 0})
    workflow.initialize()
    workflow.run()
    workflow.finalize()
    return ckpt / "model.pt"


def test_model_pt_records_the_settings_it_was_trained_with(trained):
    state = torch.load(trained, map_location="cpu", weights_only=True)
    assert set(state) == {"model", "settings"}
    settings = state["settings"]
    assert settings["channels"] == TINY["network_def#channels"] and settings["spatial_size"] == TINY["spatial_size"]
    assert settings["target"] == "liver" and settings["window"] == "abdomen" and settings["window_hu"] == [-160.0, 240.0]
    assert settings["threads"] == torch.get_num_threads()
    assert model_settings(trained)["channels"] == TINY["network_def#channels"]


def test_inference_needs_no_flag_and_refuses_a_contradicting_one(trained, tmp_path):
    case = generate_case(0, seed=6, size=32, slices=6)
    nib.save(case.stored_image(case.hu), tmp_path / "volume-0.nii.gz")
    rows = run_workflow("inference", ["inference"], "infer", input=str(tmp_path / "volume-0.nii.gz"),
                        output_dir=str(tmp_path / "out"), ckpt_file=str(trained))[0]
    assert rows[0]["segmentation"].endswith("volume-0_seg.nii.gz")
    for flag, value in (("target", "both"), ("spatial_size", 64), ("network_def#channels", [8, 16, 32, 64]),
                        ("window", "liver")):
        with pytest.raises(ValueError, match=f"--{flag} .* contradicts .*model.pt.*leave the flag out"):
            run_workflow("inference", ["inference"], "infer", input=str(tmp_path / "volume-0.nii.gz"),
                         output_dir=str(tmp_path / f"out_{flag}"), ckpt_file=str(trained), **{flag: value})


def test_evaluation_takes_the_widths_from_the_model_file(trained, lists, tmp_path):
    workflow = ConfigWorkflow(config_file=[TRAIN, EVALUATE], workflow_type="train", run_id="evaluating",
                              **{"dataset_dir": str(lists), "ckpt_file": str(trained), "progress": False,
                                 "output_dir": str(tmp_path / "eval"), "evaluation_samples": 1})
    workflow.initialize()
    metrics = workflow.run()[0]
    workflow.finalize()
    assert "liver" in metrics["channels"]


def test_ckpt_export_reads_the_weights_of_a_model_file(trained, tmp_path):
    # --ckpt_dir lets the config read the settings of <ckpt_dir>/model.pt, so no width is copied by hand
    ckpt_export("network_def", filepath=str(tmp_path / "model.ts"), ckpt_file=str(trained), config_file=INFERENCE,
                meta_file=INFERENCE.replace("inference.json", "metadata.json"), key_in_ckpt="model",
                ckpt_dir=str(trained.parent))
    assert (tmp_path / "model.ts").stat().st_size > 0
    exported = torch.jit.load(str(tmp_path / "model.ts"))
    weights = torch.load(trained, map_location="cpu", weights_only=True)["model"]
    assert torch.equal(exported.state_dict()["final.weight"], weights["final.weight"])


@pytest.fixture(scope="module")
def segmenting(lists, tmp_path_factory):
    """A tiny model trained long enough to mark the liver (so the comparison is about real masks)."""
    ckpt = tmp_path_factory.mktemp("segmenting")
    workflow = ConfigWorkflow(config_file=TRAIN, workflow_type="train", run_id="training",
                              **{**TINY, "dataset_dir": str(lists), "ckpt_dir": str(ckpt), "epochs_per_chunk": 8,
                                 "learning_rate": 0.01, "augment": False})
    workflow.initialize()
    workflow.run()
    workflow.finalize()
    return ckpt / "model.pt"


def test_bf16_channels_last_inference_agrees_with_fp32_within_the_stated_tolerance(segmenting, tmp_path):
    """The fast path (bf16 autocast, channels_last) may move a few voxels at the 0.5 threshold: the masks agree to
    Dice >= 0.98 (on the recipe's real HCC patient: liver 0.998, tumour 0.982)."""
    case = generate_case(0, seed=6, size=32, slices=8)
    nib.save(case.stored_image(case.hu), tmp_path / "volume-0.nii.gz")
    masks = {}
    for name, settings in (("fp32", {"precision": "fp32", "channels_last": False}),
                           ("bf16", {"precision": "bf16", "channels_last": True})):
        run_workflow("inference", ["inference"], "infer", input=str(tmp_path / "volume-0.nii.gz"),
                     output_dir=str(tmp_path / name), ckpt_file=str(segmenting), **settings)
        masks[name] = nib.load(tmp_path / name / "volume-0_seg.nii.gz").get_fdata() >= 1
    both = (masks["fp32"] & masks["bf16"]).sum()
    assert masks["fp32"].sum() > 0
    assert 2 * both / (masks["fp32"].sum() + masks["bf16"].sum()) >= 0.98


def test_auto_precision_takes_bf16_only_where_the_cpu_computes_it(monkeypatch):
    from workflows.machine import precision
    monkeypatch.setattr(precision, "_cpu_flags", lambda: frozenset({"avx2", "fma"}))
    assert precision.choose_precision("auto") == "fp32"
    monkeypatch.setattr(precision, "_cpu_flags", lambda: frozenset({"avx2", "avx512_bf16"}))
    assert precision.choose_precision("auto") == "bf16"
    with pytest.raises(ValueError, match="--precision must be one of"):
        precision.choose_precision("fp16")


def _compiled(network):
    return getattr(network, "_compiled_call_impl", None) is not None


def test_compile_auto_compiles_fp32_training_on_a_cpu_only(monkeypatch, caplog):
    from networks import ThreeLevelUNet
    from workflows.machine import precision
    monkeypatch.setattr(precision, "_cpu_flags", lambda: frozenset({"avx2", "fma"}))  # no native bf16: fp32
    assert _compiled(precision.compile_network(ThreeLevelUNet(channels=(4, 8, 16, 32)), "auto", "auto"))
    monkeypatch.setattr(precision, "_cpu_flags", lambda: frozenset({"avx512_bf16"}))  # bf16 autocast: eager
    assert not _compiled(precision.compile_network(ThreeLevelUNet(channels=(4, 8, 16, 32)), "auto", "auto"))
    assert not _compiled(precision.compile_network(ThreeLevelUNet(channels=(4, 8, 16, 32)), False))
    with pytest.raises(ValueError, match="compile"):
        precision.compile_network(ThreeLevelUNet(channels=(4, 8, 16, 32)), "maybe")
    monkeypatch.setattr(precision.shutil, "which", lambda name: None)  # no C++ compiler: one line, eager
    with caplog.at_level("WARNING", logger="liver_ct.precision"):
        assert not _compiled(precision.compile_network(ThreeLevelUNet(channels=(4, 8, 16, 32)), True))
    assert "no C++ compiler" in caplog.text


def test_a_compiled_network_trains_like_the_eager_one_and_saves_plain_keys():
    """torch.compile (inductor, layout optimisation off) in place: the same losses within float tolerance, and a
    state_dict with the eager network's keys (no ``_orig_mod.``), so a checkpoint loads in eager inference."""
    import copy

    from networks import BCEDiceLoss, ThreeLevelUNet
    from workflows.machine.precision import compile_network

    torch.manual_seed(0)
    eager = ThreeLevelUNet(channels=(4, 8, 16, 32))
    compiled = compile_network(copy.deepcopy(eager), True)
    x, y = torch.rand(2, 1, 32, 32), (torch.rand(2, 1, 32, 32) > 0.5).float()
    losses = {}
    for name, network in (("eager", eager), ("compiled", compiled)):
        optimizer = torch.optim.Adam(network.parameters(), 1e-3)
        losses[name] = []
        for _ in range(3):
            optimizer.zero_grad()
            loss = BCEDiceLoss()(network(x), y)
            loss.backward()
            optimizer.step()
            losses[name].append(float(loss))
    assert losses["compiled"] == pytest.approx(losses["eager"], rel=1e-4)
    assert list(compiled.state_dict()) == list(eager.state_dict())
    reloaded = ThreeLevelUNet(channels=(4, 8, 16, 32))
    reloaded.load_state_dict(compiled.state_dict())
    assert torch.allclose(reloaded(x), compiled(x), atol=1e-4)
