"""DiT interoperability: diffusers' DiTTransformer2DModel and the original DiT state-dict layout
convert to ddpm_lib's DiT with the same outputs; other layouts and settings fail by name."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import ddpm_lib
from ddpm_lib import DiT
from ddpm_lib.interop_dit import dit_from_diffusers, dit_from_original, original_dit_state_dict

pytestmark = pytest.mark.usefixtures("one_thread")


def _randomise(module: nn.Module, seed: int, std: float = 0.15) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            if parameter.requires_grad:  # not the fixed position table
                parameter.copy_(std * torch.randn(parameter.shape, generator=generator))


# ----------------------------------------------------------------------------- a reference
class _Namespace(nn.Module):
    """An empty module to hang named children on (the original's sub-module names)."""


class ReferenceDiT(nn.Module):
    """The original DiT written out from the paper (Peebles & Xie 2023, Sec. 3 and Fig. 3) with
    the key names of its code: a test oracle, independent of ddpm_lib's modules."""

    def __init__(self, input_size=8, patch=2, channels=3, hidden=16, depth=2, heads=2,
                 classes=5, learn_sigma=True):
        super().__init__()
        self.patch, self.heads, self.hidden = patch, heads, hidden
        self.out = 2 * channels if learn_sigma else channels
        self.x_embedder = _Namespace()
        self.x_embedder.proj = nn.Conv2d(channels, hidden, patch, stride=patch)
        self.t_embedder = _Namespace()
        self.t_embedder.mlp = nn.Sequential(nn.Linear(256, hidden), nn.SiLU(),
                                            nn.Linear(hidden, hidden))
        self.y_embedder = _Namespace()
        self.y_embedder.embedding_table = nn.Embedding(classes + 1, hidden)
        grid = input_size // patch
        self.pos_embed = nn.Parameter(_mae_sincos(hidden, grid)[None], requires_grad=False)
        self.blocks = nn.ModuleList()
        for _ in range(depth):
            block = _Namespace()
            block.attn = _Namespace()
            block.attn.qkv = nn.Linear(hidden, 3 * hidden)
            block.attn.proj = nn.Linear(hidden, hidden)
            block.mlp = _Namespace()
            block.mlp.fc1 = nn.Linear(hidden, 4 * hidden)
            block.mlp.fc2 = nn.Linear(4 * hidden, hidden)
            block.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 6 * hidden))
            self.blocks.append(block)
        self.final_layer = _Namespace()
        self.final_layer.linear = nn.Linear(hidden, patch * patch * self.out)
        self.final_layer.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 2 * hidden))

    def forward(self, x, t, y):
        # timestep features: [cos(t f), sin(t f)], f_i = 10000^(-i / 128)
        freqs = torch.exp(-math.log(10000) * torch.arange(128, dtype=torch.float32) / 128)
        args = t.float()[:, None] * freqs[None]
        c = self.t_embedder.mlp(torch.cat([torch.cos(args), torch.sin(args)], dim=1))
        c = c + self.y_embedder.embedding_table(torch.where(y < 0, len(
            self.y_embedder.embedding_table.weight) - 1, y))
        h = self.x_embedder.proj(x).flatten(2).transpose(1, 2) + self.pos_embed
        ln = lambda v: nn.functional.layer_norm(v, (self.hidden,), eps=1e-6)  # noqa: E731
        for block in self.blocks:
            s1, sc1, g1, s2, sc2, g2 = block.adaLN_modulation(c)[:, None].chunk(6, dim=2)
            a = ln(h) * (1 + sc1) + s1
            b, n, _ = a.shape
            q, k, v = block.attn.qkv(a).reshape(b, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
            weights = (q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])).softmax(dim=-1)
            a = block.attn.proj((weights @ v).transpose(1, 2).reshape(b, n, -1))
            h = h + g1 * a
            m = ln(h) * (1 + sc2) + s2
            h = h + g2 * block.mlp.fc2(nn.functional.gelu(block.mlp.fc1(m), approximate="tanh"))
        shift, scale = self.final_layer.adaLN_modulation(c)[:, None].chunk(2, dim=2)
        h = self.final_layer.linear(ln(h) * (1 + scale) + shift)
        grid, p = int(h.shape[1] ** 0.5), self.patch
        h = h.reshape(h.shape[0], grid, grid, p, p, self.out)
        return torch.einsum("nhwpqc->nchpwq", h).reshape(h.shape[0], self.out, grid * p, grid * p)


def _mae_sincos(dim: int, grid: int) -> torch.Tensor:
    """The MAE 2-D sin-cos table as the DiT code builds it, with numpy's meshgrid."""
    def one_d(d, pos):
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    mesh = np.meshgrid(np.arange(grid, dtype=np.float32), np.arange(grid, dtype=np.float32))
    mesh = np.stack(mesh, axis=0).reshape(2, 1, grid, grid)
    table = np.concatenate([one_d(dim // 2, mesh[0]), one_d(dim // 2, mesh[1])], axis=1)
    return torch.from_numpy(table).float()


# ----------------------------------------------------------------------------- original layout
@pytest.mark.parametrize("learn_sigma", [True, False])
def test_the_original_layout_loads_with_the_same_outputs(learn_sigma):
    reference = ReferenceDiT(learn_sigma=learn_sigma).eval()
    _randomise(reference, seed=1)
    dit = dit_from_original(reference.state_dict(), num_heads=2)
    assert dit.config["learn_sigma"] is learn_sigma and dit.config["num_classes"] == 5
    assert (dit.input_size, dit.patch_size, dit.hidden_size, dit.depth) == (8, 2, 16, 2)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(3, 3, 8, 8, generator=generator)
    t = torch.tensor([0, 417, 999])
    y = torch.tensor([4, -1, 0])
    with torch.no_grad():
        expected = reference(x, t, y)
        torch.testing.assert_close(dit(x, t, y=y), expected, rtol=1e-4, atol=1e-4)
    assert expected.abs().max() > 0.1  # the comparison is not between zeros
    back = original_dit_state_dict(dit)  # and the layout round-trips
    assert back.keys() == reference.state_dict().keys()
    for key, value in reference.state_dict().items():
        torch.testing.assert_close(back[key], value, rtol=0, atol=1e-6)
    # a training checkpoint's EMA weights are read
    again = dit_from_original({"model": {}, "ema": reference.state_dict()}, num_heads=2)
    assert torch.equal(again(x, t, y=y), dit(x, t, y=y))


def test_the_original_layout_infers_the_heads_of_the_papers_sizes():
    state = original_dit_state_dict(DiT.s2(input_size=16, num_classes=10))  # 33M parameters
    dit = dit_from_original(state)
    assert (dit.num_heads, dit.depth, dit.hidden_size, dit.input_size) == (6, 12, 384, 16)
    reference = ReferenceDiT(hidden=16, heads=2)
    with pytest.raises(ValueError, match="num_heads is needed: depth=2, hidden_size=16"):
        dit_from_original(reference.state_dict())


# ----------------------------------------------------------------------------- diffusers
def _diffusers_dit(tie: bool = True, **overrides):
    diffusers = pytest.importorskip("diffusers")
    config = dict(num_attention_heads=2, attention_head_dim=8, in_channels=3, out_channels=6,
                  num_layers=2, sample_size=8, patch_size=2, num_embeds_ada_norm=5)
    config.update(overrides)
    model = diffusers.DiTTransformer2DModel(**config).eval()
    _randomise(model, seed=2)
    if tie:  # a converted checkpoint: every block holds the same embeddings
        state = model.state_dict()
        with torch.no_grad():
            for key, value in state.items():
                if ".norm1.emb." in key and not key.startswith("transformer_blocks.0."):
                    value.copy_(state["transformer_blocks.0." + key.split(".", 2)[2]])
    return model


@pytest.mark.parametrize("learn_sigma", [True, False])
def test_diffusers_dit_converts_with_the_same_outputs(learn_sigma):
    model = _diffusers_dit(out_channels=6 if learn_sigma else 3)
    dit = dit_from_diffusers(model)
    assert dit.learn_sigma is learn_sigma and dit.config["freq_shift"] == 1.0
    assert dit.config["mlp_norm_eps"] == 1e-5  # diffusers' norm before the MLP
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(3, 3, 8, 8, generator=generator)
    t = torch.tensor([1, 250, 998])
    with torch.no_grad():
        expected = model(x, t, class_labels=torch.tensor([0, 3, 5])).sample  # 5: diffusers' null
        torch.testing.assert_close(dit(x, t, y=torch.tensor([0, 3, -1])), expected,
                                   rtol=1e-4, atol=1e-4)
    assert expected.abs().max() > 0.1
    assert ddpm_lib.dit_from_diffusers is dit_from_diffusers


def test_unconvertible_diffusers_settings_are_named():
    with pytest.raises(ValueError, match="transformer_blocks.1.norm1.emb.* differs from block 0"):
        dit_from_diffusers(_diffusers_dit(tie=False))
    with pytest.raises(ValueError, match="activation_fn='gelu'"):
        dit_from_diffusers(_diffusers_dit(activation_fn="gelu"))
    with pytest.raises(ValueError, match="norm_elementwise_affine=True"):
        dit_from_diffusers(_diffusers_dit(norm_elementwise_affine=True))
    with pytest.raises(ValueError, match="out_channels=4 and in_channels=3"):
        dit_from_diffusers(_diffusers_dit(out_channels=4))
    diffusers = pytest.importorskip("diffusers")
    with pytest.raises(TypeError, match="DiTTransformer2DModel; got UNet2DModel"):
        dit_from_diffusers(diffusers.UNet2DModel(sample_size=8, block_out_channels=(8,),
                                                 down_block_types=("DownBlock2D",),
                                                 up_block_types=("UpBlock2D",),
                                                 norm_num_groups=4, layers_per_block=1))


def test_a_checkpoint_of_another_layout_is_named(tmp_path):
    with pytest.raises(ValueError, match="not in the original DiT layout.*pos_embed.proj.weight"):
        dit_from_original(_diffusers_dit().state_dict())
    ours = DiT(input_size=8, patch_size=2, in_channels=3, hidden_size=16, depth=2, num_heads=2,
               num_classes=5)
    with pytest.raises(ValueError, match="not in the original DiT layout"):
        dit_from_original(ours.state_dict())  # ddpm_lib's own names: load with from_pretrained
    state = ReferenceDiT().state_dict()
    del state["blocks.1.mlp.fc2.bias"]
    with pytest.raises(ValueError, match="missing blocks.1.mlp.fc2.bias"):
        dit_from_original(state, num_heads=2)
    state = ReferenceDiT().state_dict()
    state["pos_embed"] = torch.zeros_like(state["pos_embed"])
    with pytest.raises(ValueError, match="pos_embed is not the fixed 2-D sin-cos table"):
        dit_from_original(state, num_heads=2)
    from ddpm_lib import UNet

    unet = UNet(in_channels=3, base_channels=8, channel_mults=(1,), num_res_blocks=1,
                attention_resolutions=(), image_size=8, norm_groups=4)
    unet.save_pretrained(tmp_path / "unet")
    with pytest.raises(ValueError, match="describes a UNet, not a DiT"):
        DiT.from_pretrained(tmp_path / "unet")
    with pytest.raises(ValueError, match="not in the original DiT layout"):
        dit_from_original(unet.state_dict())
