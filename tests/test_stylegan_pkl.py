"""Reading StyleGAN2-ADA / LAFITE snapshot pickles without running the code they embed."""
import copy
import os
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from fake_modules import registered_modules

from t2i.checkpoints.safe_load import UnsafeCheckpointError
from t2i.checkpoints.stylegan_pkl import UnsafePickleError, read_snapshot


def _reconstruct_persistent_obj(meta):
    """What torch_utils.persistence does on load: exec the embedded module source."""
    exec(meta["module_src"], {})  # noqa: S102 - the test checks this never runs
    raise AssertionError("the embedded source ran")


_reconstruct_persistent_obj.__module__ = "torch_utils.persistence"


class EasyDict(dict):
    pass


EasyDict.__module__ = "dnnlib.util"


def original_modules():
    """Register the stand-ins under the original module names while pickling (only then)."""
    return registered_modules({"torch_utils": {}, "torch_utils.persistence": {
        "_reconstruct_persistent_obj": _reconstruct_persistent_obj}, "dnnlib": {}, "dnnlib.util": {"EasyDict": EasyDict}})


def dump(obj, path: Path, protocol: int = pickle.DEFAULT_PROTOCOL) -> Path:
    with original_modules(), open(path, "wb") as f:
        pickle.dump(obj, f, protocol=protocol)
    return path


class Persistent(torch.nn.Module):
    """Pickles like a ``@persistence.persistent_class`` module: source code + class name + state."""

    module_src = ""  # set per test: code that would leave a marker file if it ever ran

    def __init__(self, **kwargs):
        super().__init__()
        self._init_args = ()
        self._init_kwargs = EasyDict(copy.deepcopy(kwargs))

    def __reduce__(self):
        fields = list(super().__reduce__())
        fields += [None] * max(3 - len(fields), 0)
        meta = dict(type="class", version=6, module_src=self.module_src, class_name=type(self).__name__,
                    state=fields[2])
        return _reconstruct_persistent_obj, (meta,), None


class FullyConnectedLayer(Persistent):
    def __init__(self, n_in, n_out, bias=True, lr_multiplier=1.0):
        super().__init__(n_in=n_in, n_out=n_out, bias=bias, lr_multiplier=lr_multiplier)
        self.weight = torch.nn.Parameter(torch.randn(n_out, n_in))
        self.bias = torch.nn.Parameter(torch.randn(n_out)) if bias else None
        self.weight_gain = lr_multiplier / np.sqrt(n_in)  # a numpy float64, as in the original


class MappingNetwork(Persistent):
    def __init__(self):
        super().__init__(num_layers=2)
        self.fc0 = FullyConnectedLayer(8, 8, lr_multiplier=np.float32(0.01))
        self.fc1 = FullyConnectedLayer(8, 8, bias=False)
        self.register_buffer("w_avg", torch.randn(8))


class SynthesisNetwork(Persistent):
    def __init__(self):
        super().__init__(img_resolution=16, f_dim=12)
        self.const = torch.nn.Parameter(torch.randn(4, 4, 4))
        self.register_buffer("resample_filter", torch.randn(4, 4).t())  # non-contiguous
        self.register_buffer("fp16", torch.randn(3).half())
        self.register_buffer("cache", torch.randn(2), persistent=False)
        self.torgb = FullyConnectedLayer(4, 3)


class Generator(Persistent):
    def __init__(self):
        super().__init__(z_dim=8, img_resolution=16, mapping_kwargs=EasyDict(num_layers=2),
                         synthesis_kwargs=EasyDict(f_dim=12, channel_base=np.int64(64)))
        self.mapping = MappingNetwork()
        self.synthesis = SynthesisNetwork()


class Discriminator(Persistent):
    def __init__(self):
        super().__init__(img_resolution=16)
        self.fts = FullyConnectedLayer(4, 12)


class Evil:
    def __init__(self, marker: Path, how: str):
        self.marker, self.how = marker, how

    def __reduce__(self):
        if self.how == "system":
            return os.system, (f"touch {self.marker}",)
        if self.how == "eval":
            return eval, (f"__import__('pathlib').Path({str(self.marker)!r}).touch()",)
        if self.how == "storage":  # a tensor storage whose torch.save bytes are a malicious pickle
            return torch.storage._load_from_bytes, (pickle.dumps(Evil(self.marker, "system"), protocol=2),)
        raise ValueError(self.how)


@pytest.fixture
def marker(tmp_path, monkeypatch):
    path = tmp_path / "code-ran"
    monkeypatch.setattr(Persistent, "module_src", f"import pathlib\npathlib.Path({str(path)!r}).touch()\n")
    yield path
    assert not path.exists(), "code from the pickle was executed"


def snapshot(**extra):
    torch.manual_seed(0)
    G = Generator()
    torch.manual_seed(0)
    G_ema = Generator().eval().requires_grad_(False)  # not deepcopy: that would go through __reduce__
    with torch.no_grad():
        G_ema.mapping.fc0.weight.mul_(0.5)
    data = dict(training_set_kwargs=dict(path="coco.zip", resolution=16, use_clip=True, xflip=False),
                args=dict(f_dim=12, temp=0.5, gamma=np.float64(10.0), loss_kwargs=EasyDict(r1_gamma=10.0)),
                G=G, D=Discriminator(), G_ema=G_ema, augment_pipe=None)
    data.update(extra)
    return data


def assert_state_equal(got, expected):
    assert list(got) == list(expected)
    for name, tensor in expected.items():
        assert type(got[name]) is torch.Tensor and not got[name].requires_grad, name
        assert got[name].dtype == tensor.dtype and torch.equal(got[name], tensor), name


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_reads_the_networks_without_running_their_source(tmp_path, marker, protocol):
    data = snapshot()
    path = dump(data, tmp_path / "network-snapshot-000100.pkl", protocol)

    state, info = read_snapshot(path)
    assert_state_equal(state, data["G_ema"].state_dict())
    assert "synthesis.cache" not in state and "mapping.fc1.bias" not in state
    assert not torch.equal(state["mapping.fc0.weight"], data["G"].mapping.fc0.weight)  # G_ema, not G
    assert info["network"] == "G_ema" and info["class_name"] == "Generator"
    assert info["networks"] == {"G": "Generator", "D": "Discriminator", "G_ema": "Generator"}
    assert info["resolution"] == 16 and info["f_dim"] == 12
    assert info["training_set_kwargs"] == data["training_set_kwargs"]
    assert info["args"] == {"f_dim": 12, "temp": 0.5, "gamma": 10.0, "loss_kwargs": {"r1_gamma": 10.0}}
    assert type(info["args"]["loss_kwargs"]) is dict
    assert info["init_kwargs"] == {"z_dim": 8, "img_resolution": 16, "mapping_kwargs": {"num_layers": 2},
                                   "synthesis_kwargs": {"f_dim": 12, "channel_base": 64}}

    d_state, d_info = read_snapshot(path, network="D")
    assert_state_equal(d_state, data["D"].state_dict())
    assert d_info["class_name"] == "Discriminator"


def test_without_args_the_info_falls_back_to_the_network_kwargs(tmp_path, marker):
    data = snapshot()
    del data["args"], data["training_set_kwargs"]
    _, info = read_snapshot(dump(data, tmp_path / "old.pkl"))
    assert info["args"] is None and info["training_set_kwargs"] is None
    assert info["resolution"] == 16 and info["f_dim"] == 12


def test_missing_network(tmp_path, marker):
    path = dump(snapshot(), tmp_path / "s.pkl")
    with pytest.raises(KeyError, match="augment_pipe.*networks: G, D, G_ema"):
        read_snapshot(path, network="augment_pipe")


@pytest.mark.parametrize("how,refused", [("system", "posix.system"), ("eval", "builtins.eval"),
                                         ("storage", "posix.system")])
def test_malicious_content_is_refused(tmp_path, marker, how, refused):
    evil = Evil(marker, how)
    path = dump(snapshot(args=dict(f_dim=12, payload=evil)), tmp_path / f"{how}.pkl")
    with pytest.raises(UnsafePickleError, match=refused) as e:
        read_snapshot(path)
    assert str(path) in str(e.value) and isinstance(e.value, UnsafeCheckpointError)


def test_malicious_module_attribute_is_refused(tmp_path, marker):
    data = snapshot()
    data["G_ema"].synthesis.hook = Evil(marker, "system")
    with pytest.raises(UnsafePickleError, match="posix.system"):
        read_snapshot(dump(data, tmp_path / "s.pkl"))


def _src_to_module(src):
    exec(src, {})  # noqa: S102 - the test checks this never runs


_src_to_module.__module__ = "torch_utils.persistence"


class ImportsSource:
    def __init__(self, src):
        self.src = src

    def __reduce__(self):
        return _src_to_module, (self.src,)


def test_other_persistence_functions_and_module_classes_are_refused(tmp_path, marker):
    data = snapshot(args=dict(payload=ImportsSource(Persistent.module_src)))
    path = tmp_path / "src.pkl"
    with original_modules():
        sys.modules["torch_utils.persistence"]._src_to_module = _src_to_module
        path.write_bytes(pickle.dumps(data))
    with pytest.raises(UnsafePickleError, match="torch_utils.persistence._src_to_module"):
        read_snapshot(path)

    data = snapshot()
    data["G_ema"].extra = torch.nn.ModuleList([torch.nn.Identity()])  # a module class that is not persistent
    with pytest.raises(UnsafePickleError, match="torch.nn.modules.container.ModuleList"):
        read_snapshot(dump(data, tmp_path / "s.pkl"))


def test_a_damaged_file_is_not_called_unsafe(tmp_path, marker):
    path = dump(snapshot(), tmp_path / "s.pkl")
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(pickle.UnpicklingError, match="not a readable snapshot") as e:
        read_snapshot(path)
    assert not isinstance(e.value, UnsafeCheckpointError)


def as_persistent(module: torch.nn.Module, **init_kwargs) -> Persistent:
    """The same tensors under the same names, pickled as the original's persistent modules."""
    out = Persistent(**init_kwargs)
    out._parameters.update(module._parameters)
    out._buffers.update(module._buffers)
    out._non_persistent_buffers_set = set(module._non_persistent_buffers_set)
    for name, child in module._modules.items():
        out._modules[name] = as_persistent(child)
    return out


def lafite_snapshot(G_ema, channel_max=16):
    """A snapshot pickle in drboog/Lafite's structure whose G_ema holds ``G_ema``'s tensors."""
    c = G_ema.config
    kwargs = dict(z_dim=c.z_dim, c_dim=0, w_dim=c.w_dim, img_resolution=c.resolution, img_channels=3,
                  mapping_kwargs=EasyDict(num_layers=c.map_num),
                  synthesis_kwargs=EasyDict(channel_base=c.channel_base, channel_max=channel_max, num_fp16_res=0,
                                            conv_clamp=None, f_dim=c.f_dim, change=c.change))
    return dict(training_set_kwargs=dict(path="coco.zip", resolution=c.resolution, use_clip=True),
                args=dict(f_dim=c.f_dim, temp=0.5), G=as_persistent(G_ema, **kwargs), D=Discriminator(),
                G_ema=as_persistent(G_ema, **kwargs), augment_pipe=None)


def test_an_original_snapshot_becomes_a_model_folder_the_workflow_samples(tmp_path, marker):
    """`convert: lafite-snapshot` on a file asset: the folder holds G_ema as our generator (same images),
    the pickle is gone, and a malicious or mismatching snapshot is refused with one line naming the asset."""
    from t2i.checkpoints.assemble import AssetError, assemble_asset
    from t2i.models.folder import load_component
    from t2i.models.lafite import LafiteGenerator

    torch.manual_seed(0)
    ours = LafiteGenerator(resolution=8, z_dim=8, w_dim=8, f_dim=6, map_num=2, text_hidden=512, channel_base=64,
                           channel_max=16, change=256, num_fp16_res=0, conv_clamp=None).eval()
    pkl = dump(lafite_snapshot(ours), tmp_path / "network-snapshot-006000.pkl")
    out = assemble_asset("lafite-orig", {"source": "local", "path": str(pkl), "convert": "lafite-snapshot"},
                         tmp_path / "asset")
    assert not list(out.rglob("*.pkl")) and (out / "SHA256SUMS").is_file()
    G = load_component(out, "generator", system="lafite")
    z, fts = torch.randn(3, 8), torch.randn(3, 6)
    with torch.no_grad():
        assert torch.equal(G(z, fts, noise_mode="const"), ours(z, fts, noise_mode="const"))

    bad = dump(lafite_snapshot(ours, channel_max=8), tmp_path / "mismatch.pkl")  # kwargs say 8 channels
    with pytest.raises(AssetError, match=r"pretrained\.lafite-orig\.convert: .*shape differs"):
        assemble_asset("lafite-orig", {"source": "local", "path": str(bad), "convert": "lafite-snapshot"},
                       tmp_path / "bad-asset")
    data = lafite_snapshot(ours)
    data["args"]["payload"] = Evil(marker, "system")
    evil = dump(data, tmp_path / "evil.pkl")
    with pytest.raises(AssetError, match=r"convert: .*refused global posix\.system"):
        assemble_asset("lafite-orig", {"source": "local", "path": str(evil), "convert": "lafite-snapshot"},
                       tmp_path / "evil-asset")
    assert not (tmp_path / "bad-asset").exists() and not (tmp_path / "evil-asset").exists()
