"""benchmarks/scaling.py: the arithmetic behind docs/scaling.md counts what the repo really writes."""

import importlib.util
import io
import json
import os
import subprocess
import sys

import torch

from training.models import create_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
spec = importlib.util.spec_from_file_location("scaling", os.path.join(ROOT, "benchmarks", "scaling.py"))
scaling = importlib.util.module_from_spec(spec)
spec.loader.exec_module(scaling)


def test_shard_bytes_per_sample_is_tar_arithmetic():
    # per sample: three 512-byte headers, cls and json padded to one block each, the JPEG to whole blocks;
    # per shard: two end blocks, then padding to tar's 10,240-byte records
    jpeg = 13455
    per_sample = 3 * 512 + 512 + 512 + -(-jpeg // 512) * 512
    shard = -(-(1000 * per_sample + 1024) // 10240) * 10240
    assert scaling.shard_bytes_per_sample(jpeg) == round(shard / 1000) == 16394


def test_checkpoint_bytes_match_a_saved_checkpoint():
    net = create_model("resnet18", 365)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    net(torch.randn(2, 3, 64, 64), torch.tensor([0, 1]))["loss"].backward()
    opt.step()  # creates the momentum buffers
    buf = io.BytesIO()
    torch.save({"model": net.state_dict(), "optimizer": opt.state_dict()}, buf)
    estimate = scaling.checkpoint_bytes("resnet18", 365)
    assert estimate <= buf.tell() <= estimate + 256 * 1024


def test_prints_the_table_inputs_as_json():
    out = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "scaling.py"), "--nodes", "2",
                          "--read-block", "4"], capture_output=True, text=True, check=True).stdout
    report = json.loads(out)
    resnet50 = report["models"]["resnet50"]
    per_gpu = resnet50["gpu_img_s_eager"]
    assert resnet50["cluster_img_s"] == round(per_gpu * 16)
    assert resnet50["s3_get_per_s"] == round(per_gpu * 16 / 4)
    assert report["bytes_per_epoch_gb"]["data_256"] == round(8_026_628 * 16394 / 1e9, 1)
    assert set(report["models"]) == {"resnet18", "resnet50", "vgg_d", "alexnet", "googlenet"}
