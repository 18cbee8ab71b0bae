"""Fine-tuning the last layers on cached trunk features: the contract, the cache, poisoned rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from backdoorlab.data.arrays import ArrayDataset
from backdoorlab.errors import ConfigError, ModelContractError
from backdoorlab.frozen_trunk import (
    LastLayers,
    StagedTrunk,
    check_last_layers_contract,
    clean_trunk_features,
    frozen_feature_set,
    load_initial_weights,
    trunk_key,
)
from backdoorlab.models.checkpoint import save_checkpoint
from backdoorlab.tasks.face_recognition import IResNet


def dataset(n: int = 10, size: int = 16) -> ArrayDataset:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    return ArrayDataset(images, {"identity": np.arange(n) % 3})


def model(size: int = 16) -> IResNet:
    torch.manual_seed(0)
    return IResNet(18, 4, 8, size).eval()


def test_last_layers_on_trunk_features_are_the_model() -> None:
    net = model()
    x = torch.rand(4, 3, 16, 16)
    last = LastLayers(net)
    check_last_layers_contract(net, last, x)
    assert torch.allclose(last(net.trunk(x)), net(x), atol=1e-5)
    assert {id(p) for p in last.parameters()} == {
        id(p) for p in [*net.last_linear.parameters(), *net.last_bn.parameters()]
    }


def test_a_forward_that_is_not_last_of_trunk_is_refused() -> None:
    class Skewed(IResNet):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return super().forward(x) + 1.0

    net = Skewed(18, 4, 8, 16).eval()
    with pytest.raises(ModelContractError, match="cannot be fine-tuned on frozen features"):
        check_last_layers_contract(net, LastLayers(net), torch.rand(2, 3, 16, 16))
    with pytest.raises(ModelContractError, match="LAST_LAYERS"):
        LastLayers(nn.Linear(3, 3))


def test_clean_features_are_cached_per_trunk_and_image(tmp_path: Path) -> None:
    net, data = model(), dataset()
    first = clean_trunk_features(net, data, cache_dir=tmp_path, progress=False)
    files = list((tmp_path / "trunk-features").glob("*.npz"))
    assert len(files) == 1 and first.shape == (10, net.feature_dim)
    with np.load(files[0]) as f:
        digests, feats = f["digests"], f["features"]
    np.savez(files[0], digests=digests, features=feats + 1)  # a cache hit reads the file instead of running the trunk
    assert np.allclose(clean_trunk_features(net, data, cache_dir=tmp_path, progress=False), first + 1)
    # another split of the same images, in another order, is read from the same file row for row
    assert np.allclose(clean_trunk_features(net, data.subset([7, 2, 5]), cache_dir=tmp_path, progress=False),
                       first[[7, 2, 5]] + 1)  # fmt: skip
    # new images (one of them twice) run the trunk, the known ones do not; the file then holds all of them
    more = dataset(14).subset(np.arange(10, 14))  # same generator: rows 10-13 differ from the first ten
    mixed = data.subset([0, 1]).concat(more).concat(more.subset([0]))
    got = clean_trunk_features(net, mixed, cache_dir=tmp_path, progress=False)
    assert np.allclose(got[:2], first[:2] + 1)
    assert np.allclose(got[2:], clean_trunk_features(net, mixed.subset(np.arange(2, 7)), progress=False), atol=1e-6)
    with np.load(files[0]) as f:
        assert len(f["digests"]) == 14 and len(set(f["digests"].tolist())) == 14
    with torch.no_grad():
        net.last_linear.weight.mul_(2)  # the last layers are not part of the key
    assert np.allclose(clean_trunk_features(net, data, cache_dir=tmp_path, progress=False), first + 1)
    with torch.no_grad():
        net.conv1.weight.mul_(2)  # the trunk is
    assert not np.allclose(clean_trunk_features(net, data, cache_dir=tmp_path, progress=False), first + 1)
    assert len(list((tmp_path / "trunk-features").glob("*.npz"))) == 2


def test_a_damaged_cache_file_is_rebuilt(tmp_path: Path) -> None:
    net, data = model(), dataset()
    first = clean_trunk_features(net, data, cache_dir=tmp_path, progress=False)
    (path,) = (tmp_path / "trunk-features").glob("*.npz")
    path.write_bytes(b"not a zip file")
    assert np.allclose(clean_trunk_features(net, data, cache_dir=tmp_path, progress=False), first)
    with np.load(path) as f:
        assert len(f["digests"]) == 10


def test_poisoned_rows_go_through_the_transform_before_the_trunk(tmp_path: Path) -> None:
    net, base = model(), dataset()
    trained = base.concat(base.subset([0, 1]))
    sources = np.array([*range(10), 0, 1])

    def transform(images: torch.Tensor, ann: dict, idx: np.ndarray):  # type: ignore[no-untyped-def]
        rows = torch.from_numpy(np.isin(idx, [10, 11]))
        images = images.clone()
        images[rows] = 1.0
        ann = dict(ann)
        ann["identity"] = torch.where(rows, torch.tensor(7), ann["identity"])
        return images, ann

    got = frozen_feature_set(net, base, trained, sources, np.array([10, 11]), transform, cache_dir=tmp_path,
                             progress=False)  # fmt: skip
    clean = clean_trunk_features(net, base, cache_dir=tmp_path, progress=False)
    assert np.allclose(got.features[:10], clean)
    with torch.no_grad():
        white = net.trunk(torch.ones(2, 3, 16, 16)).numpy()
    assert np.allclose(got.features[10:], white, atol=1e-5)
    assert got.annotations["identity"][10:].tolist() == [7, 7]
    assert got.annotations["identity"][:10].tolist() == (np.arange(10) % 3).tolist()
    x, ann = got.batch([11, 2])
    assert x.shape == (2, net.feature_dim) and ann["identity"].tolist() == [7, 2]


def test_initial_weights_must_fit_the_configured_model(tmp_path: Path) -> None:
    save_checkpoint(model(), tmp_path / "run", {"architecture": {"name": "iresnet", "kwargs": {}}})
    other = IResNet(18, 4, 8, 16)
    load_initial_weights(other, tmp_path / "run")
    assert torch.equal(other.conv1.weight, model().conv1.weight)
    with pytest.raises(ConfigError, match=r"model\.init: .* does not fit IResNet"):
        load_initial_weights(IResNet(18, 8, 8, 16), tmp_path / "run")


def test_model_init_enters_the_config_hash_by_its_weights_not_its_path(tmp_path: Path) -> None:
    import shutil

    from backdoorlab.experiments.config import validate_config

    save_checkpoint(model(), tmp_path / "a" / "run", {"architecture": {"name": "iresnet", "kwargs": {}}})
    shutil.copytree(tmp_path / "a", tmp_path / "b")

    def hash_of(init: Path) -> str:
        raw = {"task": "face_recognition", "model": {"name": "iresnet", "init": str(init)}}
        return validate_config(raw).config_hash()

    assert hash_of(tmp_path / "a" / "run") == hash_of(tmp_path / "b" / "run")
    other = model()
    with torch.no_grad():
        other.conv1.weight.add_(1)
    save_checkpoint(other, tmp_path / "b" / "run", {"architecture": {"name": "iresnet", "kwargs": {}}})
    assert hash_of(tmp_path / "a" / "run") != hash_of(tmp_path / "b" / "run")  # a retrained base: other runs


# ---------------------------------------------------------------- a tail of stages (train.trainable_from)


def test_iresnet_stages_compose_to_the_model() -> None:
    net = model()
    x = torch.rand(3, 3, 16, 16)
    out = net.prepare(x)
    names = []
    for name, stage in net.stages():
        out = stage(out)
        names.append(name)
    torch.testing.assert_close(out, net(x))
    assert names[0] == "stem" and names[-3:] == ["neck", "last_linear", "last_bn"]
    assert "layer4.1" in names and len(names) == 1 + 8 + 3  # IResNet-18: 2 blocks in each of 4 stages
    assert [n for n, _ in net.named_children()] == [n for n, _ in model().named_children()]  # nothing registered


def test_staged_trunk_cuts_before_a_block_and_shares_its_layers() -> None:
    net = model()
    x = torch.rand(4, 3, 16, 16)
    staged = StagedTrunk(net, "layer4.1", x)
    feats = staged.trunk(x)
    assert feats.shape == (4, 8 * 4 * 1 * 1)  # layer4: 8 x width channels at 16 / 16 = 1 px
    last = LastLayers(staged)
    check_last_layers_contract(staged, last, x)
    torch.testing.assert_close(last(feats), net(x))
    trained = {id(p) for p in last.parameters()}
    own = dict(net.named_parameters())
    for name in ("layer4.1.conv2.weight", "bn2.weight", "last_linear.weight", "last_bn.bias"):
        assert id(own[name]) in trained, name
    assert id(own["layer4.0.conv1.weight"]) not in trained and id(own["conv1.weight"]) not in trained


def test_staged_trunk_key_ignores_the_tail_and_differs_from_the_last_layer_trunk() -> None:
    net = model()
    x = torch.rand(2, 3, 16, 16)
    staged = StagedTrunk(net, "layer4.1", x)
    key = trunk_key(staged)
    assert key != trunk_key(net)  # another cut, other features, another cache file
    with torch.no_grad():
        net.layer4[1].conv2.weight.add_(1.0)  # a tail weight: the frozen part's features do not change
    assert trunk_key(staged) == key
    with torch.no_grad():
        net.layer3[0].conv1.weight.add_(1.0)
    assert trunk_key(staged) != key


def test_staged_trunk_refuses_unknown_stages_and_models_without_them() -> None:
    x = torch.rand(2, 3, 16, 16)
    with pytest.raises(ConfigError, match=r"'layer9\.0' is not a stage of IResNet.*layer4\.1"):
        StagedTrunk(model(), "layer9.0", x)
    with pytest.raises(ConfigError, match="after its first"):
        StagedTrunk(model(), "stem", x)  # nothing would be frozen

    class Plain(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    with pytest.raises(ModelContractError, match="does not name its stages"):
        StagedTrunk(Plain(), "layer4.1", x)
