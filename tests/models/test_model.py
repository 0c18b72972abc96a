"""The backbone registry, EmbeddingNet, and proof that the offline ImageNet weights load right."""


import numpy as np
import pytest
import torch

from ranking_lib.models.backbones import BACKBONES, create_backbone
from ranking_lib.data import TinyImageNet, load_or_build_cache
from ranking_lib.core.errors import RankingError
from ranking_lib.models.model import EmbeddingNet, imagenet_synsets

SYNSETS = imagenet_synsets()


def test_registry_names_and_unknown_backbone():
    assert {"efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "resnet18", "resnet50",
            "resnet101"} <= set(BACKBONES)
    with pytest.raises(RankingError, match=r"^backbone must be one of efficientnet_lite0, .*resnet101 \(got 'vgg'\)$"):
        create_backbone("vgg")


@pytest.mark.parametrize("backbone", ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"])
def test_efficientnet_lite_shapes_and_stages(backbone):
    b = create_backbone(backbone, pretrained=False).eval()
    assert b.num_stages == 9 and b.feature_dim == 1280
    x = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        f = b(x)
        split = b.pool(b.forward_stages(b.forward_stages(x, 0, 5), 5))
    assert f.shape == (2, 1280)
    torch.testing.assert_close(f, split)


def test_resnet_builds_without_weights_and_reports_download_failure(monkeypatch):
    b = create_backbone("resnet18", pretrained=False)
    assert b.feature_dim == 512 and b.num_stages == 5
    import torchvision

    def no_internet(*a, **k):
        raise OSError("<urlopen error [Errno -3] Temporary failure in name resolution>")

    monkeypatch.setattr(torchvision.models, "resnet50", no_internet)
    with pytest.raises(RankingError, match="could not load torchvision's ImageNet weights for resnet50.*efficientnet_lite0"):
        create_backbone("resnet50", pretrained=True)


def test_embedding_net_outputs_unit_vectors_and_is_deterministic():
    torch.manual_seed(0)
    net = EmbeddingNet(pretrained=False, input_size=64, embedding_dim=16).eval()
    imgs = torch.randint(0, 256, (4, 64, 64, 3), dtype=torch.uint8)
    with torch.no_grad():
        z1, z2 = net(imgs), net(imgs)
    assert z1.shape == (4, 16)
    torch.testing.assert_close(z1.norm(dim=1), torch.ones(4))
    assert torch.equal(z1, z2)
    with pytest.raises(RankingError, match="expected uint8 images"):
        net(imgs.float())


def test_frozen_stages_get_no_gradient_and_keep_bn_stats():
    net = EmbeddingNet(pretrained=False, input_size=64, embedding_dim=8, freeze_stages=3)
    frozen = [p for s in net.backbone.stages[:3] for p in s.parameters()]
    assert frozen and all(not p.requires_grad for p in frozen)
    bn = net.backbone.net._bn0
    before = bn.running_mean.clone()
    net.train()
    net(torch.randint(0, 256, (4, 64, 64, 3), dtype=torch.uint8)).sum().backward()
    assert torch.equal(bn.running_mean, before)
    assert all(p.grad is None for p in frozen)
    assert net.head.weight.grad is not None
    with pytest.raises(RankingError, match="freeze_stages=10"):
        EmbeddingNet(pretrained=False, freeze_stages=10)


@pytest.mark.parametrize("backbone", ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"])
def test_pretrained_efficientnet_classifies_real_tiny_imagenet(real_sample_dir, sample_cache_dir, backbone):
    """The default backbone with its ImageNet classifier on the sample's real val images.

    The sample's wnids are ImageNet synsets. Measured on exactly this test's 400 seeded val
    images of the sample (20 classes), 2-core CPU: top-5 over all 1,000 ImageNet classes 54.8 %
    at 128 px (chance 0.5 %), and 75.0 % correct among the sample's 20 classes (chance 5 %);
    at 224 px 55.5 % and 84.0 %. With wrongly mapped weights,
    torch-style padding or wrong normalisation these fall far lower; thresholds leave margin.
    """
    ds = TinyImageNet(real_sample_dir)
    val = load_or_build_cache(ds, "val", sample_cache_dir, progress=False)
    idx = np.random.default_rng(0).choice(len(val), 400, replace=False)
    imgs = torch.from_numpy(np.ascontiguousarray(val.images[np.sort(idx)]))
    labels = val.labels[np.sort(idx)]
    imagenet_ids = torch.tensor([SYNSETS.index(w) for w in ds.wnids])
    net = EmbeddingNet(backbone, pretrained=True, input_size=128).eval()
    with torch.no_grad():
        logits = torch.cat([net.backbone.classify(net.preprocess(imgs[i:i + 100])) for i in range(0, 400, 100)])
    target = imagenet_ids[torch.from_numpy(labels)]
    top5 = (logits.topk(5, dim=1).indices == target[:, None]).any(1).float().mean().item()
    among20 = (logits[:, imagenet_ids].argmax(1) == torch.from_numpy(labels)).float().mean().item()
    print(f"{backbone}: top-5 {top5:.3f}, 20-way {among20:.3f}")
    assert top5 > 0.40, f"top-5 {top5:.2f}"
    assert among20 > 0.60, f"20-way accuracy {among20:.2f}"


def test_head_init_from_classifier_reproduces_class_logits(real_sample_dir, sample_cache_dir):
    ds = TinyImageNet(real_sample_dir)
    val = load_or_build_cache(ds, "val", sample_cache_dir, progress=False)
    from ranking_lib.models.model import init_head_from_classifier

    net = EmbeddingNet(embedding_dim=len(ds.wnids), input_size=64, normalize=False).eval()
    assert init_head_from_classifier(net, ds.wnids) == len(ds.wnids)
    imgs = torch.from_numpy(np.array(val.images[:4]))
    with torch.no_grad():
        z = net(imgs)
        logits = net.backbone.classify(net.preprocess(imgs))
    ids = [SYNSETS.index(w) for w in ds.wnids]
    torch.testing.assert_close(z, logits[:, ids])
    with pytest.raises(RankingError, match="needs head=linear"):
        init_head_from_classifier(EmbeddingNet(head="mlp", pretrained=False), ds.wnids)
    assert init_head_from_classifier(EmbeddingNet(pretrained=False), ["d0000001"]) == 0
