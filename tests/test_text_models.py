"""Tests of the text-to-image model side: the byte-level TextEncoder, UNet(context_dim=...)
with cross or joint attention, TextConditionedUNet (loss, guidance, save/load), the Hugging
Face adapter, and guidance rescale / interval in the samplers."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from torch import nn

from ddpm_lib import (
    DDIMSampler,
    NoiseSchedule,
    SimpleLoss,
    TextConditionedUNet,
    TextEncoder,
    UNet,
)
from ddpm_lib.models import AttentionBlock, CrossAttentionBlock, multi_head_attention
from ddpm_lib.samplers.base import GuidanceOptions, apply_guidance, rescale_guidance

pytestmark = pytest.mark.usefixtures("one_thread")

DIM = 16


def randomize(model: nn.Module, seed: int = 0, std: float = 0.2) -> nn.Module:
    """Every parameter to N(0, std^2): a fresh UNet outputs exactly zero (zero-initialised
    output convolution), which would hide most bugs."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * std)
    return model


def tiny_unet(**overrides) -> UNet:
    config = dict(
        in_channels=3, base_channels=8, channel_mults=(1, 2), num_res_blocks=1,
        attention_resolutions=(4,), image_size=8, dropout=0.0, norm_groups=4, num_heads=2,
        context_dim=DIM,
    )
    config.update(overrides)
    return UNet(**config)


def tiny_encoder(**overrides) -> TextEncoder:
    config = dict(dim=DIM, num_layers=1, num_heads=2, max_length=24)
    config.update(overrides)
    return TextEncoder(**config)


def tiny_model(text_attention: str = "cross", **unet_overrides) -> TextConditionedUNet:
    torch.manual_seed(0)
    unet = tiny_unet(text_attention=text_attention, **unet_overrides)
    return TextConditionedUNet(unet, tiny_encoder())


# ---------------------------------------------------------------------------------------------
# tokenizer
# ---------------------------------------------------------------------------------------------
def test_tokenizer_round_trip_english_chinese_and_empty():
    encoder = tiny_encoder(max_length=40)
    prompts = ["a red circle on a blue background", "蓝色背景上的红色圆形", "",
               "naïve café ✓"]
    ids, mask = encoder.tokenize(prompts)
    assert ids.shape == mask.shape == (4, 42)
    assert ids.dtype == torch.long and mask.dtype == torch.bool
    assert encoder.decode(ids) == prompts
    # [BOS, bytes + 3, EOS, PAD...]: the layout is exactly the documented one
    data = prompts[1].encode("utf-8")
    assert len(data) == 3 * len(prompts[1])
    assert ids[1, 0] == TextEncoder.BOS_ID and ids[1, len(data) + 1] == TextEncoder.EOS_ID
    assert ids[1, 1 : len(data) + 1].tolist() == [b + TextEncoder.BYTE_OFFSET for b in data]
    assert mask.sum(1).tolist() == [len(p.encode("utf-8")) + 2 for p in prompts]
    assert ids[2, :2].tolist() == [TextEncoder.BOS_ID, TextEncoder.EOS_ID]
    assert (ids[~mask] == TextEncoder.PAD_ID).all()


def test_truncation_warns_and_never_splits_a_character():
    encoder = tiny_encoder(max_length=8)
    with pytest.warns(UserWarning, match=r"1 prompt\(s\) longer than max_length=8 UTF-8 bytes "
                                         r"were truncated \(prompt 1: 12 bytes, kept the first 6"):
        ids, mask = encoder.tokenize(["short", "红色圆形"])  # 4 characters x 3 bytes
    assert encoder.decode(ids) == ["short", "红色"]  # 8 bytes would cut the third character
    assert mask[1].sum() == 6 + 2
    with pytest.warns(UserWarning, match="truncated"):
        ids, _ = encoder.tokenize(["abcdefghij"])
    assert encoder.decode(ids) == ["abcdefgh"]


def test_prompts_are_validated():
    model = tiny_model()
    with pytest.raises(TypeError, match=r"prompts must be a list or tuple of str.*got str"):
        model.encode_prompts("a red circle")
    with pytest.raises(TypeError, match=r"prompts\[1\] must be a str; got int"):
        model.encode_prompts(["a", 3])
    with pytest.raises(TypeError, match="prompts must be a list or tuple of str"):
        model.encode_prompts(None)
    with pytest.raises(ValueError, match="prompts must hold at least one prompt"):
        model.encode_prompts([])
    with pytest.raises(ValueError, match="not a token id"):
        tiny_encoder().decode([[1, 400, 2]])


# ---------------------------------------------------------------------------------------------
# text encoder
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("pooling", ["mean", "max", "last"])
@pytest.mark.parametrize("ngram_size", [1, 4])
def test_encoder_outputs_and_padding_invariance(pooling, ngram_size):
    encoder = randomize(tiny_encoder(max_length=30, pooling=pooling, ngram_size=ngram_size,
                                     bag_of_ngrams=False), std=0.1).eval()
    with torch.no_grad():
        alone = encoder.encode(["红色的圆"])
        with pytest.warns(UserWarning, match="kept the first 29"):  # not 30: 3-byte characters
            batched = encoder.encode(["红色的圆", "a much longer prompt than 红色的圆"])
        ids, mask = encoder.tokenize(["红色的圆"])
        short = encoder(ids[:, :16], mask[:, :16])  # the same prompt with less padding
        full = encoder(ids, mask)  # every padding column through the transformer
    states, mask_out, pooled = alone
    # encode() runs the transformer on the real tokens only and pads: the full pass's numbers
    torch.testing.assert_close(full.states, states, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(full.pooled, pooled, atol=1e-5, rtol=1e-5)
    assert states.shape == (1, 32, DIM) and pooled.shape == (1, DIM)
    assert torch.equal(mask_out, mask)
    assert (states[~mask_out] == 0).all()  # padding states are zero
    real = int(mask.sum())
    if pooling == "last":
        torch.testing.assert_close(pooled[0], states[0, real - 1])  # the end token's state
    elif pooling == "max":
        torch.testing.assert_close(pooled[0], states[0, :real].amax(0))  # real tokens only
    else:
        torch.testing.assert_close(pooled[0], states[0, :real].mean(0))
    torch.testing.assert_close(batched.states[:1], states, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(batched.pooled[:1], pooled, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(short.states, states[:, :16], atol=1e-5, rtol=1e-5)
    # the text matters
    other = encoder.encode(["蓝色的方块"]).pooled
    assert (other - pooled).abs().max() > 1e-3


def test_masked_mean_averages_real_tokens_only():
    from ddpm_lib.models import masked_mean

    states = torch.arange(24.0).reshape(2, 3, 4)
    mask = torch.tensor([[True, False, True], [False, False, False]])
    out = masked_mean(states, mask)
    torch.testing.assert_close(out[0], (states[0, 0] + states[0, 2]) / 2)
    assert torch.equal(out[1], torch.zeros(4))  # no real token: zeros, not NaN
    torch.testing.assert_close(masked_mean(states), states.mean(dim=1))


def _reference_ngram_bucket(window: list[int], buckets: int) -> int:
    """The documented hash of one n-gram of token ids, in plain Python integers."""
    prime, n = 2_147_483_647, len(window)
    code = sum(token * 263**k for k, token in enumerate(reversed(window))) % prime
    multipliers = (1_000_003, 998_244_353, 1_000_000_007, 19_260_817, 1_610_612_741,
                   805_306_457, 402_653_189)
    return (code * multipliers[n - 2] + n) % (buckets - 1) + 1


def test_ngram_ids_hash_each_window_and_stop_at_padding():
    encoder = tiny_encoder(ngram_size=4, ngram_buckets=512)
    ids, _ = encoder.tokenize(["red 红", "a red"])
    buckets = encoder.ngram_ids(ids)
    assert buckets.shape == (2, ids.shape[1], 3) and buckets.dtype == torch.long
    for row in range(2):
        tokens = ids[row].tolist()
        real = sum(token != TextEncoder.PAD_ID for token in tokens)
        for i in range(ids.shape[1]):
            for n in range(2, 5):
                start = i - n + 1
                expected = (_reference_ngram_bucket(tokens[start:i + 1], 512)
                            if start >= 0 and i < real else 0)
                assert buckets[row, i, n - 2].item() == expected, (row, i, n)
    # the same word gives the same buckets wherever it stands ("red" ends at byte 3 and 5)
    assert torch.equal(buckets[0, 3, :2], buckets[1, 5, :2])
    # ... and different words different ones
    assert buckets[0, 3, 1] != encoder.ngram_ids(encoder.tokenize(["rad"])[0])[0, 3, 1]


def test_ngram_embedding_changes_the_states_and_is_saved(tmp_path):
    torch.manual_seed(0)
    encoder = randomize(tiny_encoder(ngram_size=3, ngram_buckets=64), std=0.1).eval()
    assert encoder.ngram_embedding is not None
    assert encoder.ngram_embedding.weight.shape == (64, DIM)
    with torch.no_grad():
        before = encoder.encode(["a red circle"]).states
        encoder.ngram_embedding.weight[1:].mul_(3.0)
        after = encoder.encode(["a red circle"]).states
    assert (after - before).abs().max() > 1e-3
    encoder.save_pretrained(tmp_path / "enc")
    loaded = TextEncoder.from_pretrained(tmp_path / "enc").eval()
    assert loaded.config == encoder.config
    with torch.no_grad():
        assert torch.equal(loaded.encode(["a red circle"]).states, after)
    assert tiny_encoder(ngram_size=1).ngram_embedding is None


def test_encoder_saved_before_the_ngram_options_still_loads(tmp_path):
    encoder = randomize(tiny_encoder(ngram_size=1, pooling="last", bag_of_ngrams=False),
                        std=0.1).eval()
    encoder.save_pretrained(tmp_path / "old")
    config_path = tmp_path / "old" / "config.json"
    config = json.loads(config_path.read_text())
    for key in ("ngram_size", "ngram_buckets", "pooling", "bag_of_ngrams"):
        config.pop(key)
    config_path.write_text(json.dumps(config))
    (tmp_path / "old" / "manifest.json").unlink()  # older versions wrote no manifest
    loaded = TextEncoder.from_pretrained(tmp_path / "old")
    assert loaded.ngram_size == 1 and loaded.pooling == "last" and not loaded.bag_of_ngrams
    with torch.no_grad():
        assert torch.equal(loaded.encode(["a red circle"]).pooled,
                           encoder.encode(["a red circle"]).pooled)


@pytest.mark.parametrize("ngram_size", [1, 3])
def test_bag_of_ngrams_adds_the_scaled_sum_of_its_vectors_to_the_pooled_vector(ngram_size):
    torch.manual_seed(0)
    encoder = randomize(tiny_encoder(max_length=30, ngram_size=ngram_size, ngram_buckets=64),
                        std=0.1).eval()
    assert encoder.bag_of_ngrams and encoder.config["bag_of_ngrams"]
    if encoder.bag_ngram_embedding is not None:
        with torch.no_grad():
            encoder.bag_ngram_embedding.weight[0].zero_()  # "no n-gram", as built
    plain = tiny_encoder(max_length=30, ngram_size=ngram_size, ngram_buckets=64,
                         bag_of_ngrams=False)
    plain.load_state_dict(encoder.state_dict(), strict=False)  # the same network, no bag
    prompts = ["a red circle", "红色的圆形在左边"]
    with torch.no_grad():
        bagged = encoder.encode(prompts)
        without = plain.eval().encode(prompts)
        ids, mask = encoder.tokenize(prompts)
        padded = encoder(ids, mask)  # every padding column: the bag ignores them
    torch.testing.assert_close(bagged.states, without.states)  # only the pooled vector moves
    torch.testing.assert_close(padded.pooled, bagged.pooled, atol=1e-5, rtol=1e-5)
    for row in range(2):  # the documented formula, one caption at a time
        tokens = ids[row][mask[row]].tolist()
        total = sum(encoder.bag_byte_embedding.weight[t] for t in tokens)
        if ngram_size > 1:
            for i in range(len(tokens)):
                for n in range(2, ngram_size + 1):
                    if i - n + 1 >= 0:
                        bucket = _reference_ngram_bucket(tokens[i - n + 1:i + 1], 64)
                        total = total + encoder.bag_ngram_embedding.weight[bucket]
        else:
            assert encoder.bag_ngram_embedding is None
        expected = without.pooled[row] + total / len(tokens) ** 0.5
        torch.testing.assert_close(bagged.pooled[row], expected, atol=1e-5, rtol=1e-5)
    # initialised large (std 1), so captions differ in the pooled vector from the first step
    fresh = tiny_encoder(ngram_size=ngram_size)
    assert 0.8 < float(fresh.bag_byte_embedding.weight[3:].detach().std()) < 1.2
    # it is trained: the loss reaches both tables
    encoder.train()
    encoder.encode(prompts).pooled.square().sum().backward()
    assert encoder.bag_byte_embedding.weight.grad.abs().sum() > 0
    if ngram_size > 1:
        assert encoder.bag_ngram_embedding.weight.grad[1:].abs().sum() > 0


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"ngram_size": 0}, "ngram_size must be >= 1; got 0"),
        ({"ngram_size": 9}, "ngram_size must be at most 8"),
        ({"ngram_buckets": 1}, "ngram_buckets must be >= 2"),
        ({"pooling": "sum"}, r"pooling must be one of \('mean', 'max', 'last'\); got 'sum'"),
    ],
)
def test_encoder_options_are_validated(overrides, match):
    with pytest.raises(ValueError, match=match):
        tiny_encoder(**overrides)
    with pytest.raises(TypeError, match="bag_of_ngrams must be a bool; got str"):
        tiny_encoder(bag_of_ngrams="yes")


# ---------------------------------------------------------------------------------------------
# attention layers
# ---------------------------------------------------------------------------------------------
def _reference_attention(q, k, v, mask):
    """softmax(q k^T / sqrt(d)) v with masked keys removed, one (batch, head) at a time."""
    out = torch.empty_like(q)
    for b in range(q.shape[0]):
        keep = mask[b]
        for h in range(q.shape[1]):
            logits = q[b, h] @ k[b, h, keep].T / q.shape[-1] ** 0.5
            out[b, h] = logits.softmax(-1) @ v[b, h, keep]
    return out.transpose(1, 2).reshape(q.shape[0], q.shape[2], -1)


def test_multi_head_attention_masks_keys(generator):
    q = torch.randn(2, 2, 5, 4, generator=generator)
    k = torch.randn(2, 2, 7, 4, generator=generator)
    v = torch.randn(2, 2, 7, 4, generator=generator)
    mask = torch.tensor([[1, 1, 0, 1, 0, 0, 0], [1] * 7]).bool()
    out = multi_head_attention(q, k, v, mask[:, None, None, :])
    torch.testing.assert_close(out, _reference_attention(q, k, v, mask))


@pytest.mark.parametrize("joint", [False, True])
def test_attention_blocks_against_the_formula(joint, generator):
    channels, heads, length = 8, 2, 5
    if joint:
        block = AttentionBlock(channels, num_heads=heads, norm_groups=4, context_dim=DIM)
    else:
        block = CrossAttentionBlock(channels, DIM, num_heads=heads, norm_groups=4)
    x = torch.randn(2, channels, 3, 3, generator=generator)
    context = torch.randn(2, length, DIM, generator=generator)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]).bool()
    # zero-initialised output projection: the block starts as the identity
    assert torch.equal(block(x, context, mask), x)
    randomize(block)
    h = block.norm(x).flatten(2).transpose(1, 2)  # (B, 9, C)
    split = lambda z: z.view(2, -1, heads, channels // heads).transpose(1, 2)  # noqa: E731
    kc, vc = block.context_kv(context).chunk(2, dim=-1)
    if joint:
        q, ks, vs = block.qkv(h).chunk(3, dim=-1)
        k, v = torch.cat([kc, ks], 1), torch.cat([vc, vs], 1)
        full = torch.cat([mask, torch.ones(2, 9, dtype=torch.bool)], 1)
    else:
        q, k, v, full = block.q(h), kc, vc, mask
    a = _reference_attention(split(q), split(k), split(v), full)
    expected = x + block.proj_out(a).transpose(1, 2).reshape(x.shape)
    torch.testing.assert_close(block(x, context, mask), expected, atol=1e-5, rtol=1e-5)
    # padding values never matter
    noisy = context.clone()
    noisy[0, 3:] = 100.0
    torch.testing.assert_close(block(x, noisy, mask), expected, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# UNet(context_dim)
# ---------------------------------------------------------------------------------------------
def _text_inputs(generator, batch=2, length=6):
    context = torch.randn(batch, length, DIM, generator=generator)
    mask = torch.ones(batch, length, dtype=torch.bool)
    mask[0, 3:] = False
    return context, mask


@pytest.mark.parametrize("text_attention", ["cross", "joint"])
def test_unet_places_text_attention_and_output_shapes(text_attention, generator):
    unet = tiny_unet(text_attention=text_attention)
    kinds = {n: type(m).__name__ for n, m in unet.named_modules() if n.endswith("context_attn")}
    # one per attention position: level 1 (4x4) has 1 down + 2 up blocks, plus the middle
    expected = "CrossAttentionBlock" if text_attention == "cross" else "AttentionBlock"
    assert sorted(kinds) == ["down.1.blocks.0.context_attn", "mid.0.context_attn",
                             "up.0.blocks.0.context_attn", "up.0.blocks.1.context_attn"]
    assert set(kinds.values()) == {expected}
    self_attention = [n for n, m in unet.named_modules() if n.endswith(".attn") and m is not None]
    assert len(self_attention) == (4 if text_attention == "cross" else 0)
    context, mask = _text_inputs(generator)
    x = torch.randn(2, 3, 8, 8, generator=generator)
    assert unet(x, torch.tensor([1, 2]), context=context, context_mask=mask).shape == x.shape
    assert unet.config["context_dim"] == DIM and unet.config["text_attention"] == text_attention
    assert "context_dim" not in tiny_unet(context_dim=None).config  # plain configs unchanged
    assert tiny_unet().text_attention == "joint"  # the default: measured faster and smaller


def test_cross_attention_unet_starts_as_the_plain_unet(generator):
    """Zero-initialised text blocks: a text UNet whose other weights are those of a plain UNet
    gives the plain UNet's output exactly, whatever the text."""
    plain = randomize(tiny_unet(context_dim=None)).eval()
    text = tiny_unet(text_attention="cross").eval()
    missing, unexpected = text.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and missing and all("context" in name for name in missing)
    x = torch.randn(2, 3, 8, 8, generator=generator)
    t = torch.tensor([4, 9])
    context, mask = _text_inputs(generator)
    with torch.no_grad():
        expected = plain(x, t)
        assert torch.equal(text(x, t, context=context, context_mask=mask), expected)
        assert torch.equal(text(x, t, context=-3 * context), expected)
        # once the new blocks are trained, the text changes the output
        randomize(text)
        a = text(x, t, context=context, context_mask=mask)
        b = text(x, t, context=-context, context_mask=mask)
    assert (a - b).abs().max() > 1e-3


@pytest.mark.parametrize("text_attention", ["cross", "joint"])
def test_fresh_text_unet_ignores_the_text_and_pooled_path_is_zero(text_attention, generator):
    unet = tiny_unet(text_attention=text_attention)
    assert torch.count_nonzero(unet.context_embed.weight) == 0
    for name, module in unet.named_modules():
        if name.endswith("context_attn"):
            assert torch.count_nonzero(module.proj_out.weight) == 0
    randomize(unet.out)  # a non-zero output head, the rest as initialised
    x = torch.randn(2, 3, 8, 8, generator=generator)
    t = torch.tensor([4, 9])
    context, mask = _text_inputs(generator)
    with torch.no_grad():
        a = unet(x, t, context=context, context_mask=mask)
        b = unet(x, t, context=torch.randn(2, 6, DIM, generator=generator), context_mask=mask)
    assert a.abs().max() > 0 and torch.equal(a, b)


@pytest.mark.parametrize("text_attention", ["cross", "joint"])
def test_padding_never_changes_the_output(text_attention, generator):
    model = randomize(tiny_model(text_attention), std=0.15).eval()
    x = torch.randn(1, 3, 8, 8, generator=generator)
    t = torch.tensor([7])
    with torch.no_grad():
        alone = model(x, t, **model.encode_prompts(["红色的圆"]))
        both = model(torch.cat([x, x]), torch.cat([t, t]),
                     **model.encode_prompts(["红色的圆", "a longer prompt than it"]))
        # more padding tokens, with garbage values, appended to the context
        kwargs = model.encode_prompts(["红色的圆"])
        kwargs["context"] = torch.cat([kwargs["context"], torch.randn(1, 5, DIM) * 50], 1)
        kwargs["context_mask"] = torch.cat(
            [kwargs["context_mask"], torch.zeros(1, 5, dtype=torch.bool)], 1
        )
        padded = model(x, t, **kwargs)
        other = model(x, t, **model.encode_prompts(["蓝色的方块"]))
    torch.testing.assert_close(both[:1], alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(padded, alone, atol=1e-5, rtol=1e-5)
    assert (other - alone).abs().max() > 1e-3


def test_context_pooled_defaults_to_the_masked_mean(generator):
    unet = randomize(tiny_unet()).eval()
    x = torch.randn(2, 3, 8, 8, generator=generator)
    t = torch.tensor([1, 2])
    context, mask = _text_inputs(generator)
    mean = torch.stack([context[0, :3].mean(0), context[1].mean(0)])
    with torch.no_grad():
        torch.testing.assert_close(
            unet(x, t, context=context, context_mask=mask),
            unet(x, t, context=context, context_mask=mask, context_pooled=mean),
        )
        # an integer 0/1 mask (Hugging Face's convention) means the same
        torch.testing.assert_close(
            unet(x, t, context=context, context_mask=mask.long()),
            unet(x, t, context=context, context_mask=mask),
        )


def test_class_labels_work_beside_text(generator):
    unet = randomize(tiny_unet(num_classes=3)).eval()
    x = torch.randn(2, 3, 8, 8, generator=generator)
    t = torch.tensor([1, 2])
    context, mask = _text_inputs(generator)
    with torch.no_grad():
        a = unet(x, t, torch.tensor([0, 1]), context=context, context_mask=mask)
        b = unet(x, t, torch.tensor([2, -1]), context=context, context_mask=mask)
    assert (a - b).abs().max() > 1e-3
    with pytest.raises(ValueError, match="class-conditional"):
        unet(x, t, context=context)


def test_gradient_checkpointing_with_text(generator):
    model = randomize(tiny_model()).train()
    x = torch.randn(2, 3, 8, 8, generator=generator)
    t = torch.tensor([1, 2])
    grads = []
    for checkpointing in (False, True):
        model.zero_grad()
        model.unet.gradient_checkpointing = checkpointing
        model(x, t, **model.encode_prompts(["a", "红"])).square().mean().backward()
        grads.append([p.grad.clone() for p in model.text_encoder.parameters()])
    assert any(g.abs().max() > 0 for g in grads[0])  # the loss reaches the text encoder
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


class _GatedContextUNet(UNet):
    """Changes how text enters by overriding one factory method."""

    def make_context_attention(self, channels, level):
        block = super().make_context_attention(channels, level)
        block.register_buffer("gate", torch.tensor(0.5))
        return block


def test_subclass_overrides_how_text_enters(generator):
    unet = _GatedContextUNet(base_channels=8, channel_mults=(1, 2), num_res_blocks=1,
                             attention_resolutions=(4,), image_size=8, norm_groups=4,
                             context_dim=DIM)
    gated = [m for n, m in unet.named_modules() if n.endswith("context_attn")]
    assert len(gated) == 4 and all(float(m.gate) == 0.5 for m in gated)


def test_bad_text_input_names_the_argument(generator):
    plain = tiny_unet(context_dim=None)
    text = tiny_unet()
    x = torch.randn(2, 3, 8, 8, generator=generator)
    t = torch.tensor([1, 2])
    context, mask = _text_inputs(generator)
    with pytest.raises(ValueError, match=r"built without context_dim; build it with context_dim"):
        plain(x, t, context=context)
    with pytest.raises(ValueError, match=r"built with context_dim=16 and needs context="):
        text(x, t)
    with pytest.raises(ValueError, match=r"context must have shape \(2, L, 16\).*got \(2, 6, 5\)"):
        text(x, t, context=torch.randn(2, 6, 5))
    with pytest.raises(ValueError, match=r"context must have shape \(2, L, 16\).*got \(3, 6, 16\)"):
        text(x, t, context=torch.randn(3, 6, DIM))
    with pytest.raises(ValueError, match=r"context_mask must have shape \(2, 6\).*got \(2, 5\)"):
        text(x, t, context=context, context_mask=mask[:, :5])
    with pytest.raises(TypeError, match="context_mask must be a bool"):
        text(x, t, context=context, context_mask=mask.float())
    with pytest.raises(ValueError, match="context_mask has a row without any real token"):
        text(x, t, context=context, context_mask=torch.zeros(2, 6, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"context_pooled must be a tensor of shape \(2, 16\)"):
        text(x, t, context=context, context_pooled=torch.zeros(2, 3))
    with pytest.raises(TypeError, match="context must be a floating-point tensor"):
        text(x, t, context=torch.zeros(2, 6, DIM, dtype=torch.long))
    with pytest.raises(ValueError, match="context_dim must be >= 1"):
        tiny_unet(context_dim=0)
    with pytest.raises(ValueError, match=r"text_attention must be one of 'cross', 'joint'"):
        tiny_unet(text_attention="concat")
    with pytest.raises(ValueError, match=r"unet.context_dim=16 must equal.*text_encoder.dim=32"):
        TextConditionedUNet(text, tiny_encoder(dim=32))
    with pytest.raises(ValueError, match="unet was built without context_dim"):
        TextConditionedUNet(plain, tiny_encoder())


# ---------------------------------------------------------------------------------------------
# TextConditionedUNet: loss, sampling with guidance, save/load
# ---------------------------------------------------------------------------------------------
def test_simple_loss_trains_both_parts():
    model = tiny_model().train()
    schedule = NoiseSchedule.linear(100)
    x0 = torch.rand(2, 3, 8, 8) * 2 - 1
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    encoder_before = [p.clone() for p in model.text_encoder.parameters()]
    # zero-initialised output head and text blocks: the gradient reaches the text blocks from
    # the second step and the encoder from the third
    for _ in range(3):
        optimizer.zero_grad()
        loss = SimpleLoss(schedule)(model, x0, **model.encode_prompts(["a red circle", "红色"]))
        loss.backward()
        optimizer.step()
    assert torch.isfinite(loss)
    after = model.text_encoder.parameters()
    changed = [not torch.equal(a, b) for a, b in zip(encoder_before, after)]
    assert any(changed)


@pytest.mark.parametrize("text_attention", ["cross", "joint"])
def test_guidance_batches_text_and_matches_the_formula(text_attention, generator):
    model = randomize(tiny_model(text_attention), std=0.15).eval()
    schedule = NoiseSchedule.linear(100)
    sampler = DDIMSampler(schedule, num_steps=3)
    prompts, negative = ["a red circle", "蓝色的方块"], ["", ""]
    cond, uncond = model.encode_prompts(prompts), model.encode_prompts(negative)
    x_T = torch.randn(2, 3, 8, 8, generator=generator)
    scale = 3.0
    out = sampler.sample(model, None, x_T=x_T, model_kwargs=cond, guidance_scale=scale,
                         unconditional_kwargs=uncond)
    # the same loop by hand: two separate model calls per step
    x = x_T
    with torch.no_grad():
        for t in sampler.timesteps:
            tt = torch.full((2,), int(t))
            c, u = model(x, tt, **cond), model(x, tt, **uncond)
            x = sampler.step(u + scale * (c - u), t, x)
    torch.testing.assert_close(out, x, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("text_attention", ["cross", "joint"])
def test_save_load_round_trip_is_bitwise(tmp_path, text_attention, generator):
    model = randomize(tiny_model(text_attention, num_classes=2), std=0.1).eval()
    model.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "config.json", "manifest.json", "text_encoder", "unet"]
    for part in ("unet", "text_encoder"):
        assert sorted(p.name for p in (tmp_path / part).iterdir()) == [
            "config.json", "manifest.json", "model.safetensors"]
    assert json.loads((tmp_path / "unet" / "config.json").read_text())["text_attention"] == (
        text_attention)
    loaded = TextConditionedUNet.from_pretrained(tmp_path)
    assert loaded.config == model.config
    for (name, a), (name_b, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert name == name_b and torch.equal(a, b), name
    x = torch.randn(2, 3, 8, 8, generator=generator)
    t, y = torch.tensor([3, 8]), torch.tensor([0, 1])
    with torch.no_grad():
        expected = model(x, t, y, **model.encode_prompts(["红色的圆", ""]))
        assert torch.equal(loaded(x, t, y, **loaded.encode_prompts(["红色的圆", ""])), expected)
    # the encoder alone round-trips too, and a part cannot be loaded as the whole
    encoder = TextEncoder.from_pretrained(tmp_path / "text_encoder")
    assert encoder.config == model.text_encoder.config
    with pytest.raises(ValueError, match="does not describe a TextConditionedUNet"):
        TextConditionedUNet.from_pretrained(tmp_path / "unet")
    with pytest.raises(FileNotFoundError):
        TextConditionedUNet.from_pretrained(tmp_path / "missing")


# ---------------------------------------------------------------------------------------------
# Hugging Face adapter (a tiny random T5 encoder and the ByT5 tokenizer: nothing downloaded)
# ---------------------------------------------------------------------------------------------
def test_hf_text_encoder_adapter(tmp_path, generator):
    transformers = pytest.importorskip("transformers")
    from ddpm_lib import HFTextEncoder

    config = transformers.T5Config(vocab_size=384, d_model=DIM, d_kv=8, d_ff=32, num_layers=1,
                                   num_heads=2, dropout_rate=0.0)
    torch.manual_seed(0)
    t5 = transformers.T5EncoderModel(config).eval()
    tokenizer = transformers.ByT5Tokenizer()
    encoder = HFTextEncoder(t5, tokenizer, max_length=20)
    assert encoder.dim == DIM
    model = TextConditionedUNet(randomize(tiny_unet()), encoder).eval()
    with torch.no_grad():
        kwargs = model.encode_prompts(["a red circle", "红色"])
    assert kwargs["context"].shape == (2, 20, DIM) and kwargs["context_mask"].dtype == torch.bool
    assert kwargs["context_mask"].sum(1).tolist() == [13, 7]  # bytes + </s>
    real = kwargs["context"][1, :7]
    torch.testing.assert_close(kwargs["context_pooled"][1], real.mean(0))
    with pytest.warns(UserWarning, match="longer than max_length=20 tokens were truncated"):
        encoder.tokenize(["x" * 30])
    x = torch.randn(2, 3, 8, 8, generator=generator)
    t = torch.tensor([1, 2])
    with torch.no_grad():
        expected = model(x, t, **kwargs)
    model.save_pretrained(tmp_path)
    loaded = TextConditionedUNet.from_pretrained(tmp_path)
    assert isinstance(loaded.text_encoder, HFTextEncoder)
    with torch.no_grad():
        assert torch.equal(loaded(x, t, **loaded.encode_prompts(["a red circle", "红色"])),
                           expected)


# ---------------------------------------------------------------------------------------------
# guidance rescale (Lin et al. 2024) and guidance interval (Kynkaanniemi et al. 2024)
# ---------------------------------------------------------------------------------------------


def test_rescale_guidance_matches_eq_15_16(generator):
    cond = torch.randn(3, 2, 4, 4, generator=generator)
    uncond = torch.randn(3, 2, 4, 4, generator=generator) * 0.5
    guided = uncond + 7.5 * (cond - uncond)
    phi = 0.7
    out = rescale_guidance(guided, cond, phi)
    for b in range(3):  # one sample at a time, with numpy's std (ddof=1 as torch.std)
        ratio = cond[b].numpy().std(ddof=1) / guided[b].numpy().std(ddof=1)
        expected = phi * guided[b] * float(ratio) + (1 - phi) * guided[b]
        torch.testing.assert_close(out[b], expected, atol=1e-5, rtol=1e-5)
    # the rescaled prediction (phi = 1) has exactly the conditional std, per sample
    full = rescale_guidance(guided, cond, 1.0)
    torch.testing.assert_close(full.flatten(1).std(1), cond.flatten(1).std(1))
    assert torch.equal(rescale_guidance(guided, cond, 0.0), guided)


def test_rescale_guidance_matches_diffusers(generator):
    pipeline = pytest.importorskip("diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion")
    cond = torch.randn(2, 4, 8, 8, generator=generator)
    guided = cond * 3 + torch.randn(2, 4, 8, 8, generator=generator)
    for phi in (0.0, 0.3, 0.7, 1.0):
        torch.testing.assert_close(
            rescale_guidance(guided, cond, phi),
            pipeline.rescale_noise_cfg(guided, cond, guidance_rescale=phi),
        )


def test_guidance_interval_switches_per_sample_with_no_sync(generator):
    cond = torch.randn(4, 2, 3, generator=generator)
    uncond = torch.randn(4, 2, 3, generator=generator)
    t = torch.tensor([10, 200, 500, 900])
    out = apply_guidance(cond, uncond, t, 4.0, GuidanceOptions(interval=(200, 500)))
    guided = uncond + 4.0 * (cond - uncond)
    assert torch.equal(out[0], cond[0]) and torch.equal(out[3], cond[3])  # outside: conditional
    assert torch.equal(out[1], guided[1]) and torch.equal(out[2], guided[2])  # inclusive ends
    both = apply_guidance(cond, uncond, t, 4.0, GuidanceOptions(rescale=0.5, interval=(0, 300)))
    rescaled = rescale_guidance(guided, cond, 0.5)
    torch.testing.assert_close(both[:2], rescaled[:2])
    assert torch.equal(both[2:], cond[2:])


def _toy_model(x, t, y):
    """A model whose conditional and unconditional predictions differ in scale and offset."""
    scale = torch.where(y >= 0, 0.4 + 0.2 * y.float(), torch.full_like(y, 0.1, dtype=x.dtype))
    offset = (t.float() / 100.0).sin() * (y.float() + 1.5)
    return scale[:, None, None, None] * x + offset[:, None, None, None]


@pytest.mark.parametrize("learn_sigma", [False, True])
def test_sampler_applies_rescale_and_interval_as_the_formulas(learn_sigma, generator):
    schedule = NoiseSchedule.linear(100)
    sampler = DDIMSampler(schedule, num_steps=5, learn_sigma=learn_sigma)
    def model(x, t, y):  # with learn_sigma, the variance half must pass through unguided
        out = _toy_model(x, t, y)
        return torch.cat([out, out * 3], 1) if learn_sigma else out
    y = torch.tensor([0, 2])
    x_T = torch.randn(2, 3, 4, 4, generator=generator)
    scale, phi, interval = 5.0, 0.7, (30, 70)
    out = sampler.sample(model, None, x_T=x_T, model_kwargs={"y": y}, guidance_scale=scale,
                         guidance_rescale=phi, guidance_interval=interval)
    x, used = x_T, []
    for t in sampler.timesteps.tolist():
        tt = torch.full((2,), t)
        c, u = _toy_model(x, tt, y), _toy_model(x, tt, torch.full_like(y, -1))
        if interval[0] <= t <= interval[1]:
            g = u + scale * (c - u)
            dims = (1, 2, 3)
            ratio = c.std(dim=dims, keepdim=True) / g.std(dim=dims, keepdim=True)
            prediction = phi * g * ratio + (1 - phi) * g
            used.append(t)
        else:
            prediction = c
        if learn_sigma:
            prediction = torch.cat([prediction, c * 3], 1)
        x = sampler.step(prediction, t, x)
    assert used and len(used) < len(sampler.timesteps)  # the interval cut the run
    torch.testing.assert_close(out, x, atol=1e-5, rtol=1e-5)
    # an interval holding every timestep is plain guidance; an empty one is no guidance
    plain = sampler.sample(model, None, x_T=x_T, model_kwargs={"y": y}, guidance_scale=scale)
    assert torch.equal(plain, sampler.sample(model, None, x_T=x_T, model_kwargs={"y": y},
                                             guidance_scale=scale, guidance_interval=(0, 99)))
    unguided = sampler.sample(model, None, x_T=x_T, model_kwargs={"y": y})
    torch.testing.assert_close(
        unguided,
        sampler.sample(model, None, x_T=x_T, model_kwargs={"y": y}, guidance_scale=scale,
                       guidance_interval=(-10, -1)),
    )


def test_guidance_options_are_validated(generator):
    sampler = DDIMSampler(NoiseSchedule.linear(100), num_steps=2)
    kwargs = dict(x_T=torch.randn(1, 3, 4, 4), model_kwargs={"y": torch.tensor([0])})
    with pytest.raises(ValueError, match="guidance_rescale must be in \\[0, 1\\]; got 1.5"):
        sampler.sample(_toy_model, None, guidance_scale=2.0, guidance_rescale=1.5, **kwargs)
    with pytest.raises(TypeError, match="guidance_rescale must be a float"):
        sampler.sample(_toy_model, None, guidance_scale=2.0, guidance_rescale="0.7", **kwargs)
    with pytest.raises(TypeError, match="guidance_interval must be a pair"):
        sampler.sample(_toy_model, None, guidance_scale=2.0, guidance_interval=(1, 2, 3), **kwargs)
    with pytest.raises(ValueError, match=r"t_lo <= t_hi; got \(50, 10\)"):
        sampler.sample(_toy_model, None, guidance_scale=2.0, guidance_interval=(50, 10), **kwargs)
    with pytest.raises(ValueError, match="need guidance_scale"):
        sampler.sample(_toy_model, None, guidance_rescale=0.5, **kwargs)
    model = tiny_model()
    with pytest.raises(ValueError, match=r"unconditional_kwargs=model.encode_prompts"):
        sampler.sample(model, (1, 3, 8, 8), model_kwargs=model.encode_prompts(["a"]),
                       guidance_scale=2.0)
    with pytest.raises(ValueError, match=r"model_kwargs\['context'\] has batch size 2; expected 1"):
        sampler.sample(model, (1, 3, 8, 8), model_kwargs=model.encode_prompts(["a", "b"]))


@pytest.mark.compile
@pytest.mark.slow
def test_guidance_rescale_and_interval_compile_into_one_graph(small_schedule, generator):
    """The interval is a torch.where on the timestep tensor: one graph for the whole run."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    sampler = DDIMSampler(small_schedule, num_steps=10)
    y = torch.tensor([0, 2])
    x_T = torch.randn(2, 3, 4, 4, generator=generator)
    torch._dynamo.reset()
    counters.clear()
    runs = {}
    for compile in (True, False):
        with torch._dynamo.config.patch(error_on_recompile=True):
            runs[compile] = sampler.sample(
                _toy_model, None, x_T=x_T, model_kwargs={"y": y}, guidance_scale=4.0,
                guidance_rescale=0.7, guidance_interval=(10, 30), compile=compile,
            )
    torch.testing.assert_close(runs[True], runs[False], rtol=0, atol=1e-4)
    assert counters["stats"]["unique_graphs"] == 1, dict(counters["stats"])


def test_hf_text_encoder_uses_clip_pooler_output():
    transformers = pytest.importorskip("transformers")
    from ddpm_lib import HFTextEncoder

    tokenizer = transformers.ByT5Tokenizer()  # no vocabulary file: nothing downloaded
    config = transformers.CLIPTextConfig(
        vocab_size=384, hidden_size=DIM, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, max_position_embeddings=20, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    encoder = HFTextEncoder(transformers.CLIPTextModel(config).eval(), tokenizer, max_length=20)
    with torch.no_grad():
        states, mask, pooled = encoder.encode(["red", "蓝色"])
    # CLIP pools the end-of-text token's state: the last real token here
    last = mask.sum(1) - 1
    torch.testing.assert_close(pooled, states[torch.arange(2), last])


def test_hf_text_encoder_from_pretrained_without_transformers_names_the_extra(
        tmp_path, monkeypatch):
    from ddpm_lib import HFTextEncoder

    monkeypatch.setitem(sys.modules, "transformers", None)  # import fails
    with pytest.raises(ImportError, match=r'pip install "ddpm-lib\[transformers\]"'):
        HFTextEncoder.from_pretrained(tmp_path)
