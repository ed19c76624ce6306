"""Every setting of every bundle config is parsed by its type: a bad value is one line naming it before anything is
built, and a switch given as ``false`` / ``False`` / ``0`` (what ``python -m monai.bundle run ... --x false`` hands
the config) switches off."""

import json

import pytest
import torch
from monai.bundle import ConfigParser, ConfigWorkflow

from workflows.bundle import BundleCommandError, config_file
from workflows.machine.settings import SETTINGS

from .conftest import TINY, TRAIN

CONFIGS = {
    "train": ["train"],
    "evaluate": ["train", "evaluate"],
    "inference": ["inference"],
    "multi_gpu_train": ["train", "multi_gpu_train"],
    "multi_gpu_evaluate": ["train", "evaluate", "multi_gpu_evaluate"],
}
#: top-level ids that are the bundle's wiring (components, run lists), not settings a user gives
WIRING = {"_meta_", "imports", "bundle_root", "initialize", "training", "evaluating", "inference", "finalize", "network_def",
          "network", "loss", "optimizer", "lr_scheduler", "network_input", "train", "validate", "chunk_run",
          "chunked_training", "model_settings", "inference_network", "preprocessing", "inferer", "postprocessing",
          "dataset", "scan", "handlers", "evaluator", "scan_inference", "slice_evaluation", "liver_boxes", "tumour_staged",
          "tumour_stage", "settings", "evaluation_settings"}
#: a value each setting refuses
BAD = {
    "dataset_dir": "", "ckpt_dir": "", "ckpt_file": "", "input": "", "output_dir": "", "tensorboard_dir": "",
    "val_datalist": "", "full_val_datalist": "", "mlflow_tracking_uri": "", "mlflow_experiment": "",
    "architecture": "vnet", "target": "kidney", "spatial_size": 8192, "channels": "[4,8]", "window": "lungs",
    "window_hu": "[100,-100]",
    "chunk": "abc", "seed": "abc", "epochs_per_chunk": 0, "batch_size": 0, "learning_rate": -0.1,
    "checkpoint_every": 0, "val_interval": 0, "augment": "maybe", "progress": "maybe", "compile": "maybe",
    "tensorboard": "maybe", "mlflow": "false-ish", "evaluation_samples": -1, "sw_batch_size": 0,
    "largest_liver": "maybe", "min_tumour_mm3": "nan", "flip_check": "maybe", "deidentify": "yes", "overwrite": "2", "shard": "3/2",
    "channels_last": "maybe", "device": "cuda:7" if not torch.cuda.is_available() else "tpu", "threads": -1,
    "num_workers": -1, "pin_memory": "maybe", "precision": "fp16", "context": 9, "members": 0, "stage": "tumour",
    "crop_margin_mm": -1, "liver_model": "/nonexistent/model.pt", "synthetic_lesions": 1.5, "lesion_types": "round:1",
}
#: the override that sets a setting where its id is not its name
OVERRIDE_ID = {"channels": "network_def#channels"}


def _merged(names):
    parser = ConfigParser()
    parser.read_config([config_file(name) for name in names])
    return parser.config


def _settings_of(names):
    return sorted(key for key in _merged(names) if key not in WIRING)


def _checked_text(names):
    config = _merged(names)
    return (json.dumps(config.get("settings", "")) + json.dumps(config.get("evaluation_settings", ""))
            + json.dumps(config.get("initialize", [])))


@pytest.mark.parametrize("name", CONFIGS)
def test_every_setting_of_every_config_has_a_parser_and_is_checked_first(name):
    settings = _settings_of(CONFIGS[name])
    assert settings, name
    assert not [s for s in settings if s not in SETTINGS], name  # each has its parser
    checked = _checked_text(CONFIGS[name])
    missing = [s for s in settings if f"{s}=@{OVERRIDE_ID.get(s, s)}" not in checked]
    assert not missing, f"{name}: not in a check_settings call: {missing}"
    assert set(BAD) >= set(settings)


def _workflow(config, lists, tmp_path, **overrides):
    if config == "inference":
        base = {"ckpt_file": str(tmp_path / "model.pt"), "input": str(tmp_path), "output_dir": str(tmp_path / "out")}
        return ConfigWorkflow(config_file=config_file("inference"), workflow_type="infer", run_id="inference",
                              logging_file=False, **{**base, **overrides})
    files = [TRAIN] if config == "train" else [TRAIN, config_file("evaluate")]
    base = {**TINY, "dataset_dir": str(lists), "ckpt_dir": str(tmp_path / "models")}
    return ConfigWorkflow(config_file=files, workflow_type="train" if config == "train" else "eval",
                          run_id="training" if config == "train" else "evaluating", logging_file=False,
                          **{**base, **overrides})


CASES = [(config, setting) for config in ("train", "evaluate", "inference") for setting in _settings_of(CONFIGS[config])
         if not (config == "evaluate" and setting in _settings_of(["train"]))]


@pytest.mark.parametrize("config, setting", CASES, ids=[f"{c}-{s}" for c, s in CASES])
def test_a_bad_value_of_any_setting_is_one_line_naming_it(config, setting, lists, tmp_path):
    workflow = _workflow(config, lists, tmp_path, **{OVERRIDE_ID.get(setting, setting): BAD[setting]})
    with pytest.raises(BundleCommandError, match=rf"^error: --{OVERRIDE_ID.get(setting, setting)} ") as error:
        workflow.initialize()
        if config == "evaluate":
            workflow.run()
    assert "\n" not in str(error.value)
    assert not (tmp_path / "models").exists() and not (tmp_path / "out").exists()  # nothing built or written


def _parsed(config, lists, tmp_path, setting, value, component):
    workflow = _workflow(config, lists, tmp_path, **{setting: value})
    workflow.initialize()
    return workflow.parser.get_parsed_content(component)


def _handlers(items):
    return {type(item).__name__ for item in items}


SWITCHES = [  # (config, setting, component, what the component is when the switch is off / on)
    ("train", "tensorboard", "train#handlers", lambda c: "TensorBoardStatsHandler" in _handlers(c)),
    ("train", "mlflow", "train#handlers", lambda c: "MLFlowHandler" in _handlers(c)),
    ("train", "augment", "train#augmented", lambda c: c.enabled),
    ("train", "progress", "train#handlers", lambda c: next(h for h in c if type(h).__name__ == "LossProgressBar").enabled),
    ("train", "pin_memory", "train#dataloader", lambda c: c.pin_memory),
    ("evaluate", "tensorboard", "validate#handlers", lambda c: "TensorBoardStatsHandler" in _handlers(c)),
    ("inference", "largest_liver", "postprocessing",
     lambda c: "KeepLargestConnectedComponentd" in _handlers(c.transforms)),
    ("inference", "flip_check", "tumour_staged", lambda c: c.options["flip_check"]),
    ("inference", "deidentify", "dataset", lambda c: c.deidentify),
    ("inference", "deidentify", "postprocessing", lambda c: c.transforms[-1].deidentify),
    ("inference", "overwrite", "scan_inference", lambda c: c.overwrite),
    ("inference", "channels_last", "inference_network", lambda c: c.channels_last),
]


@pytest.mark.parametrize("config, setting, component, is_on", SWITCHES, ids=[f"{s[0]}-{s[1]}-{s[2]}" for s in SWITCHES])
def test_false_False_and_0_switch_off_and_true_True_and_1_switch_on(config, setting, component, is_on, lists, tmp_path):
    for k, value in enumerate(["false", "False", "0", 0, False]):
        assert not is_on(_parsed(config, lists, tmp_path / f"off{k}", setting, value, component)), (setting, value)
    for k, value in enumerate(["true", "True", "1", 1, True]):
        assert is_on(_parsed(config, lists, tmp_path / f"on{k}", setting, value, component)), (setting, value)
