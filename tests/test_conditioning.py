"""ddpm_lib.conditioning: each kind of condition, guidance batching, and which inputs a model reads.

The text models here are stand-ins with an ``encode_prompts`` that records its calls and
encodes a prompt as its length (so which prompts reached the model is visible in the tensors);
the real text model is exercised through the pipeline in test_pipeline.py.
"""

from __future__ import annotations

import pytest
import torch

from ddpm_lib.conditioning import (
    NULL_CLASS,
    ClassLabel,
    LowResImage,
    Prompt,
    conditions_for,
    default_unconditional_kwargs,
    guidance_inputs,
    guidance_kwargs,
)


class FakeTextModel(torch.nn.Module):
    """Encodes each prompt as ``(len(prompt), number of spaces)``; records every call."""

    def __init__(self, num_classes=None) -> None:
        super().__init__()
        self.calls: list[list[str]] = []
        if num_classes is not None:
            self.num_classes = num_classes

    def encode_prompts(self, prompts):
        self.calls.append(list(prompts))
        lengths = torch.tensor([[len(p), p.count(" ")] for p in prompts], dtype=torch.float32)
        return {"context": lengths[:, None, :], "context_pooled": lengths}


class LabelModel(torch.nn.Module):
    def __init__(self, num_classes) -> None:
        super().__init__()
        self.num_classes = num_classes


# ----------------------------------------------------------------------------- ClassLabel


def test_class_label_drop_replaces_exactly_the_dropped_entries():
    condition = ClassLabel(5, dropout=0.25)
    assert condition.dropout == 0.25 and condition.num_classes == 5
    labels = torch.tensor([4, 0, 3, 1, 2, 4])
    dropped = torch.tensor([True, False, False, True, False, True])
    out = condition.drop(labels, dropped)
    assert out.tolist() == [-1, 0, 3, -1, 2, -1]
    assert out.dtype == labels.dtype and labels.tolist() == [4, 0, 3, 1, 2, 4]  # not in place
    assert condition.drop(labels, torch.zeros(6, dtype=torch.bool)).tolist() == labels.tolist()
    assert condition.drop(labels, torch.ones(6, dtype=torch.bool)).tolist() == [NULL_CLASS] * 6
    null = condition.null_values(labels)
    assert null.shape == labels.shape and null.dtype == labels.dtype
    assert null.tolist() == [-1] * 6 and NULL_CLASS == -1


def test_class_label_check_and_collate():
    condition = ClassLabel(3)
    ok = torch.tensor([-1, 0, 2])
    assert condition.check(ok) is ok
    with pytest.raises(ValueError, match=r"labels must be in \[0, 2\].*got values in \[0, 3\]"):
        condition.check(torch.tensor([0, 3]))
    with pytest.raises(ValueError, match=r"got values in \[-2, 1\]"):
        condition.check(torch.tensor([-2, 1]))
    with pytest.raises(ValueError, match="my_labels must be in"):
        condition.check(torch.tensor([7]), "my_labels")
    with pytest.raises(TypeError, match="integer tensor.*float"):
        condition.check(torch.tensor([0.0, 1.0]))
    with pytest.raises(TypeError, match="integer tensor.*bool"):
        condition.check(torch.tensor([True]))
    collated = condition.collate([2, 0, 1], torch.device("cpu"))
    assert collated.dtype == torch.long and collated.tolist() == [2, 0, 1]
    with pytest.raises(ValueError, match=r"\(B,\) batch.*\(2, 2\)"):
        condition.collate([[0, 1], [1, 0]], torch.device("cpu"))


def test_class_label_default_values_cycle_through_the_classes():
    assert ClassLabel(3).default_values(7).tolist() == [0, 1, 2, 0, 1, 2, 0]
    assert ClassLabel(4).default_values(2).tolist() == [0, 1]
    assert ClassLabel(1).default_values(3).tolist() == [0, 0, 0]


@pytest.mark.parametrize("num_classes", [0, -2, True, 2.0, "3", None])
def test_class_label_refuses_a_bad_number_of_classes(num_classes):
    with pytest.raises(ValueError, match="num_classes must be a positive int"):
        ClassLabel(num_classes)


def test_dropout_is_a_probability():
    with pytest.raises(ValueError, match=r"dropout must be a float in \[0, 1\]; got 1.5"):
        ClassLabel(3, dropout=1.5)
    with pytest.raises(ValueError, match="dropout"):
        Prompt(dropout=float("nan"))
    with pytest.raises(TypeError, match="dropout must be a float"):
        LowResImage(dropout="0.1")
    with pytest.raises(TypeError, match="dropout"):
        Prompt(dropout=True)
    assert Prompt().dropout == 0.1 and LowResImage().dropout == 0.0 and ClassLabel(2).dropout == 0.1


# ----------------------------------------------------------------------------- Prompt


def test_prompt_drop_null_and_model_kwargs():
    condition = Prompt(dropout=0.2)
    prompts = ["a cat", "一只狗", "", "a red fox"]
    assert condition.drop(prompts, torch.tensor([False, True, False, True])) == [
        "a cat", "", "", ""]
    assert condition.drop(prompts, torch.zeros(4, dtype=torch.bool)) == prompts
    assert condition.null_values(prompts) == ["", "", "", ""]
    model = FakeTextModel()
    kwargs = condition.model_kwargs(("a cat", "a red fox"), model)
    assert model.calls == [["a cat", "a red fox"]]
    assert kwargs["context_pooled"].tolist() == [[5.0, 1.0], [9.0, 2.0]]
    assert set(kwargs) == {"context", "context_pooled"}
    with pytest.raises(TypeError, match="encode_prompts.*LabelModel"):
        condition.model_kwargs(["a cat"], LabelModel(3))
    assert condition.collate(("x", "y"), torch.device("cpu")) == ["x", "y"]
    with pytest.raises(TypeError, match=r"captions\[1\] must be a str"):
        condition.collate(["x", 3], torch.device("cpu"))


# ----------------------------------------------------------------------------- LowResImage


def test_low_res_image_drops_to_zeros_and_is_never_dropped_by_guidance():
    condition = LowResImage(dropout=0.5)
    images = torch.arange(1, 3 * 2 * 4 * 4 + 1, dtype=torch.float32).reshape(3, 2, 4, 4)
    out = condition.drop(images, torch.tensor([False, True, False]))
    assert torch.equal(out[0], images[0]) and torch.equal(out[2], images[2])
    assert torch.equal(out[1], torch.zeros(2, 4, 4))
    assert torch.equal(condition.null_values(images), torch.zeros_like(images))
    assert condition.model_kwargs(images, None) == {"cond_image": images}
    assert condition.collate(images.double(), torch.device("cpu")).dtype == torch.float32
    with pytest.raises(ValueError, match=r"\(B, C, h, w\)"):
        condition.collate(images[0], torch.device("cpu"))
    assert LowResImage.guided is False and ClassLabel.guided and Prompt.guided

    y = torch.tensor([1, 2, 0])
    uncond = default_unconditional_kwargs({"cond_image": images, "y": y})
    assert uncond["cond_image"] is images  # the same image in both halves
    assert uncond["y"].tolist() == [-1, -1, -1]
    batched = guidance_kwargs({"cond_image": images, "y": y}, None, 3)
    assert torch.equal(batched["cond_image"], torch.cat([images, images]))
    assert batched["y"].tolist() == [1, 2, 0, -1, -1, -1]
    # an image alone gives guidance nothing to drop
    with pytest.raises(ValueError, match="guidance_scale needs a condition to drop"):
        guidance_kwargs({"cond_image": images}, None, 3)


# ----------------------------------------------------------------------------- guidance_kwargs


def test_guidance_kwargs_concatenates_each_batched_entry():
    y = torch.tensor([2, 0])
    context = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(0))
    null_context = torch.zeros(2, 3, 4)
    out = guidance_kwargs({"y": y}, None, 2)
    assert set(out) == {"y"} and out["y"].tolist() == [2, 0, -1, -1]
    assert y.tolist() == [2, 0]  # the caller's kwargs are not changed
    out = guidance_kwargs({"context": context, "y": y, "scale": 2.5, "flag": None},
                          {"context": null_context}, 2)
    assert torch.equal(out["context"], torch.cat([context, null_context]))
    assert out["y"].tolist() == [2, 0, -1, -1]  # the default null, then the given entries
    assert out["scale"] == 2.5 and out["flag"] is None  # unbatched and equal: passed through
    scalar = torch.tensor(0.5)
    assert guidance_kwargs({"y": y, "s": scalar}, None, 2)["s"] is scalar
    # explicit unconditional labels win over the default -1
    assert guidance_kwargs({"y": y}, {"y": torch.tensor([1, 1])}, 2)["y"].tolist() == [2, 0, 1, 1]


def test_guidance_kwargs_errors():
    y = torch.tensor([2, 0])
    with pytest.raises(ValueError, match="same keys; 'extra' is in only one"):
        guidance_kwargs({"y": y}, {"extra": torch.zeros(2)}, 2)
    with pytest.raises(ValueError, match=r"unconditional_kwargs\['y'\] must be a tensor of shape "
                                         r"\(2,\) like model_kwargs\['y'\]; got \(3,\)"):
        guidance_kwargs({"y": y}, {"y": torch.tensor([-1, -1, -1])}, 2)
    with pytest.raises(ValueError, match=r"unconditional_kwargs\['y'\].*got list"):
        guidance_kwargs({"y": y}, {"y": [-1, -1]}, 2)
    with pytest.raises(ValueError, match=r"model_kwargs\['scale'\] is not batched"):
        guidance_kwargs({"y": y, "scale": 2.0}, {"scale": 3.0}, 2)
    with pytest.raises(ValueError, match=r"model_kwargs\['s'\] is not batched"):
        guidance_kwargs({"y": y, "s": torch.tensor(1.0)}, {"s": torch.tensor(1.0)}, 2)
    with pytest.raises(ValueError, match="guidance_scale needs a condition to drop"):
        guidance_kwargs({}, None, 2)
    with pytest.raises(ValueError, match="guidance_scale needs a condition to drop"):
        guidance_kwargs(None, None, 2)
    with pytest.raises(ValueError, match="guidance_scale needs a condition to drop"):
        guidance_kwargs({"scale": 2.0}, {}, 2)  # nothing differs between the halves
    # a text model's kwargs without the encoded negative prompts
    text = {"context": torch.zeros(2, 3, 4), "context_mask": torch.ones(2, 3, dtype=torch.bool)}
    with pytest.raises(ValueError, match="needs a condition to drop.*encode_prompts"):
        guidance_kwargs(text, None, 2)
    with pytest.raises(ValueError, match="guidance_scale needs a condition to drop"):
        default_unconditional_kwargs({"context_pooled": torch.zeros(2, 4)})
    with pytest.raises(ValueError, match="guidance_scale needs a condition to drop"):
        guidance_kwargs(text, {}, 2)  # no negative prompts given: nothing differs
    with pytest.raises(TypeError, match=r"model_kwargs\['y'\] must be a tensor"):
        guidance_kwargs({"y": [0, 1]}, None, 2)


# ----------------------------------------------------------------------------- conditions_for


def test_conditions_for_each_kind_of_model():
    from ddpm_lib import UNet

    unet = UNet(in_channels=1, base_channels=8, channel_mults=(1,), num_res_blocks=1,
                attention_resolutions=(), image_size=4, num_classes=3, norm_groups=4)
    (condition,) = conditions_for(unet, class_dropout=0.3)
    assert isinstance(condition, ClassLabel)
    assert condition.num_classes == 3 and condition.dropout == 0.3
    assert conditions_for(unet, [1]) and conditions_for(LabelModel(2), [torch.tensor(0)])
    (prompt,) = conditions_for(FakeTextModel(), ["a caption"], caption_dropout=0.0)
    assert isinstance(prompt, Prompt) and prompt.dropout == 0.0
    assert conditions_for(torch.nn.Identity()) == []
    assert conditions_for(torch.nn.Identity(), []) == []
    assert conditions_for(LabelModel(None)) == []
    assert conditions_for(LabelModel(True)) == []  # a bool is not a number of classes
    unconditional = UNet(in_channels=1, base_channels=8, channel_mults=(1,), num_res_blocks=1,
                         attention_resolutions=(), image_size=4, norm_groups=4)
    assert conditions_for(unconditional) == []


def test_conditions_for_refuses_fields_that_do_not_fit_the_model():
    with pytest.raises(TypeError, match="caption.*no encode_prompts"):
        conditions_for(torch.nn.Identity(), ["a caption"])
    with pytest.raises(TypeError, match="no encode_prompts"):
        conditions_for(LabelModel(3), ["a caption"])
    with pytest.raises(ValueError, match="text-conditioned.*no caption.*int"):
        conditions_for(FakeTextModel(), [3])
    with pytest.raises(ValueError, match="text-conditioned.*no caption"):
        conditions_for(FakeTextModel(), [])
    with pytest.raises(ValueError, match=r"class-conditional \(num_classes=3\).*no labels"):
        conditions_for(LabelModel(3), [])
    with pytest.raises(ValueError, match="one condition"):
        conditions_for(FakeTextModel(num_classes=3), ["a caption"])


# ----------------------------------------------------------------------------- guidance_inputs


def test_guidance_inputs_for_a_class_conditional_model():
    model = LabelModel(3)
    kwargs, uncond, count = guidance_inputs(model)
    assert count == 3 and kwargs["y"].tolist() == [0, 1, 2] and uncond is None
    kwargs, uncond, count = guidance_inputs(model, 5, guidance_scale=2.0)
    assert count == 5 and kwargs["y"].tolist() == [0, 1, 2, 0, 1]
    assert uncond is None  # the samplers drop y to -1 themselves
    kwargs, _, count = guidance_inputs(model, labels=[2, 2, 0, -1])
    assert count == 4 and kwargs["y"].tolist() == [2, 2, 0, -1]
    assert kwargs["y"].dtype == torch.long
    kwargs, _, count = guidance_inputs(model, labels=torch.tensor(1))
    assert count == 1 and kwargs["y"].tolist() == [1]
    with pytest.raises(ValueError, match=r"one label per sample \(2\); got 3"):
        guidance_inputs(model, 2, labels=[0, 1, 2])
    with pytest.raises(ValueError, match=r"labels must be in \[0, 2\]"):
        guidance_inputs(model, labels=[3])
    with pytest.raises(ValueError, match="prompts.*need a text model"):
        guidance_inputs(model, prompts=["a cat"])
    with pytest.raises(ValueError, match="prompts.*need a text model"):
        guidance_inputs(model, negative_prompts=["a cat"])
    for bad in (0, -1, True, 2.0):
        with pytest.raises(ValueError, match="num_samples must be a positive int"):
            guidance_inputs(model, bad)


def test_guidance_inputs_for_a_text_model():
    model = FakeTextModel()
    kwargs, uncond, count = guidance_inputs(model, prompts=["a cat", "two red dogs"])
    assert count == 2 and uncond is None and model.calls == [["a cat", "two red dogs"]]
    assert kwargs["context_pooled"].tolist() == [[5.0, 1.0], [12.0, 2.0]]
    model.calls.clear()
    kwargs, uncond, count = guidance_inputs(model, prompts=["a cat", "b"], guidance_scale=3.0)
    assert count == 2 and model.calls == [["a cat", "b"], ["", ""]]  # the null prompt
    assert uncond["context_pooled"].tolist() == [[0.0, 0.0], [0.0, 0.0]]
    model.calls.clear()
    _, uncond, _ = guidance_inputs(model, 2, prompts=["a cat", "b"],
                                   negative_prompts=["no dogs here", "x"], guidance_scale=3.0)
    assert model.calls[-1] == ["no dogs here", "x"]
    assert uncond["context_pooled"].tolist() == [[12.0, 2.0], [1.0, 0.0]]
    with pytest.raises(ValueError, match="give prompts="):
        guidance_inputs(model, 2)
    with pytest.raises(ValueError, match=r"prompts must have one prompt per sample \(3\); got 2"):
        guidance_inputs(model, 3, prompts=["a", "b"])
    with pytest.raises(ValueError, match=r"negative_prompts must have one prompt per sample \(2\); "
                                         r"got 1"):
        guidance_inputs(model, prompts=["a", "b"], negative_prompts=["c"], guidance_scale=2.0)
    with pytest.raises(TypeError, match="wrap it"):
        guidance_inputs(model, prompts="a cat")
    with pytest.raises(ValueError, match="labels need a class-conditional model"):
        guidance_inputs(model, prompts=["a"], labels=[0])


def test_guidance_inputs_for_an_unconditional_model():
    model = torch.nn.Identity()
    assert guidance_inputs(model) == ({}, None, 1)
    assert guidance_inputs(model, 4) == ({}, None, 4)
    with pytest.raises(ValueError, match="labels need a class-conditional model"):
        guidance_inputs(model, labels=[0, 1])
    with pytest.raises(ValueError, match="guidance_scale needs a conditional model.*unconditional"):
        guidance_inputs(model, 2, guidance_scale=2.0)
    with pytest.raises(ValueError, match="need a text model"):
        guidance_inputs(model, prompts=["a"])
